// portcullis: the proxy command (SPEC §2).
//
//   portcullis -c FILE        run
//   portcullis -t -c FILE     check the config and the files it names; exit 0/1
//   portcullis --version     the version, and the libraries and parser build in use
#include <llhttp.h>
#include <openssl/crypto.h>
#include <uv.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "proxy/config.h"
#include "proxy/core_dumps.h"
#include "proxy/llhttp/simd.h"
#include "proxy/server.h"
#include "proxy/supported.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: portcullis -c FILE       run the proxy\n"
               "       portcullis -t -c FILE    check the config and exit\n"
               "       portcullis --version\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (!portcullis::disableCoreDumps()) std::perror("portcullis: warning: prctl(PR_SET_DUMPABLE, 0)");
  std::string config_path;
  bool test_only = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--version") == 0 || std::strcmp(a, "-v") == 0) {
      // As `nginx -V`: what this binary runs with, for bug reports.
      std::printf("portcullis %s\nllhttp %d.%d.%d (%s build of the parser), libuv %s, %s\n", PORTCULLIS_VERSION,
                  LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH,
                  portcullis_llhttp_simd_active() != 0 ? "SSE4.2" : "baseline", uv_version_string(),
                  OpenSSL_version(OPENSSL_VERSION));
      return 0;
    } else if (std::strcmp(a, "-t") == 0) {
      test_only = true;
    } else if (std::strcmp(a, "-c") == 0 && i + 1 < argc) {
      config_path = argv[++i];
    } else if (std::strcmp(a, "-h") == 0 || std::strcmp(a, "--help") == 0) {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "portcullis: unknown argument '%s'\n", a);
      usage();
      return 1;
    }
  }
  if (config_path.empty()) {
    usage();
    return 1;
  }
  if (test_only) {
    portcullis::Config cfg;
    std::string error;
    if (!portcullis::loadConfig(config_path, cfg, error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      std::fprintf(stderr, "portcullis: configuration %s is invalid\n", config_path.c_str());
      return 1;
    }
    if (!portcullis::checkSupported(cfg, error) || !portcullis::checkNamedFiles(cfg, error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      std::fprintf(stderr, "portcullis: configuration %s is invalid\n", config_path.c_str());
      return 1;
    }
    std::printf("portcullis: configuration %s is ok\n", config_path.c_str());
    return 0;
  }
  portcullis::ServerOptions opts;
  opts.config_path = config_path;
  portcullis::Server server(std::move(opts));
  return server.run();
}
