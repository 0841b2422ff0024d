// portcullisctl: the admin tool (SPEC §4). Each command group lives in its
// own file (ctl_<group>.cc) and registers one entry point here.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "proxy/core_dumps.h"
#include "tools/ctl.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: portcullisctl <command> ...\n"
               "  token issue|revoke|rotate|list ...   credentials (SPEC §4)\n"
               "  keys gen ...                         upload encryption keyring\n"
               "  decrypt --keyring FILE < in > out    decrypt a pcx1 upload\n"
               "  audit verify ...                     check the audit log chain\n"
               "  --version\n");
}

}  // namespace

int main(int argc, char** argv) {
  // Before any command reads a keyring or a token.
  if (!portcullis::disableCoreDumps()) std::perror("portcullisctl: warning: prctl(PR_SET_DUMPABLE, 0)");
  if (argc < 2) {
    usage();
    return 2;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "--version") {
    std::printf("portcullisctl %s\n", PORTCULLIS_VERSION);
    return 0;
  }
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    usage();
    return 0;
  }
  for (const portcullis::ctl::Command& c : portcullis::ctl::commands()) {
    if (cmd == c.name) return c.run(args);
  }
  std::fprintf(stderr, "portcullisctl: unknown command '%s'\n", cmd.c_str());
  usage();
  return 2;
}
