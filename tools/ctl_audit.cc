// portcullisctl audit verify (SPEC §8).
//
//   audit verify --keyring FILE LOG
//     Checks every record's mac and the seq/prev chain of LOG with the audit
//     keys derived from the keyring (old keys must still be in it). Exit 0 and
//     one summary line on stdout when intact; exit 1 and one line on stderr
//     naming the line, seq and kind of the first bad record; exit 2 on usage
//     or I/O errors (unreadable keyring or log).
#include <cstdio>
#include <memory>
#include <string>

#include "proxy/audit_verify.h"
#include "proxy/keyring.h"
#include "tools/ctl.h"

namespace {

using portcullis::ctl::Args;

constexpr char kUsage[] = "usage: audit verify --keyring FILE LOG";

int usageError(const std::string& msg) {
  std::fprintf(stderr, "portcullisctl audit: %s (%s)\n", msg.c_str(), kUsage);
  return 2;
}

int verify(const Args& args) {
  std::string keyring, log;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--keyring" && i + 1 < args.size()) {
      keyring = args[++i];
    } else if (!args[i].empty() && args[i][0] != '-' && log.empty()) {
      log = args[i];
    } else {
      return usageError("unexpected argument '" + args[i] + "'");
    }
  }
  if (keyring.empty() || log.empty()) return usageError("--keyring FILE and LOG are required");
  std::string error;
  std::shared_ptr<const portcullis::LocalKeyring> ring = portcullis::LocalKeyring::load(keyring, error);
  if (!ring) {
    std::fprintf(stderr, "portcullisctl audit verify: %s\n", error.c_str());
    return 2;
  }
  const portcullis::VerifyResult r = portcullis::verifyAuditFile(log, *ring);
  if (r.why == "io") {
    std::fprintf(stderr, "portcullisctl audit verify: %s: %s\n", log.c_str(), r.detail.c_str());
    return 2;
  }
  if (!r.ok) {
    std::string seq = r.first_bad_seq != 0 ? ", seq " + std::to_string(r.first_bad_seq) : "";
    std::fprintf(stderr, "%s: line %llu%s: %s: %s\n", log.c_str(),
                 static_cast<unsigned long long>(r.first_bad_line), seq.c_str(), r.why.c_str(),
                 r.detail.c_str());
    return 1;
  }
  std::string extra;
  if (r.continues_from_seq != 0) {
    extra += "; continues a chain from seq " + std::to_string(r.continues_from_seq) + " (rotated file)";
  }
  if (r.torn_accepted != 0) {
    extra += "; " + std::to_string(r.torn_accepted) + " torn tail(s) covered by audit.torn records";
  }
  std::printf("%s: intact, %llu records, last seq %llu%s\n", log.c_str(),
              static_cast<unsigned long long>(r.records), static_cast<unsigned long long>(r.last_seq),
              extra.c_str());
  return 0;
}

int audit(const Args& args) {
  if (args.empty() || args[0] != "verify") return usageError("unknown subcommand");
  return verify(Args(args.begin() + 1, args.end()));
}

const portcullis::ctl::CommandRegistration kAudit("audit", audit);

}  // namespace
