// Fuzzes the audit log verifier (proxy/audit_verify.h), which reads files an
// attacker may have written: arbitrary bytes through verifyAuditLog() (from a
// memfd, so its buffered reader and line splitting run for real) and each
// line through parseAuditLine(). Key "k1" = bytes 00..1f, the key of the
// seeds in tests/fuzz/audit_verify/ (an intact chain, a rotated file, a torn
// tail and an edited record, made with Python's hmac/hashlib from SPEC §8
// alone). It must never crash or leak, and an intact verdict must mean every
// line parsed.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "proxy/audit_verify.h"
#include "proxy/keyring.h"

namespace {

class FixedKeys final : public portcullis::KeyProvider {
 public:
  const std::string& activeKeyId() const override { return id_; }
  bool masterKey(std::string_view id, uint8_t* out) const override {
    if (id != "k1") return false;
    for (int i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(i);
    return true;
  }

 private:
  std::string id_ = "k1";
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static FixedKeys keys;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_t at = 0;
  bool all_parse = true;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    const bool terminated = nl != std::string_view::npos;
    if (!terminated) nl = text.size();
    portcullis::AuditLine line;
    if (!portcullis::parseAuditLine(text.substr(at, nl - at), line) || !terminated) all_parse = false;
    at = nl + 1;
  }
  const int fd = memfd_create("audit", 0);
  if (fd < 0) return 0;
  size_t off = 0;
  while (off < size) {
    const ssize_t w = ::write(fd, data + off, size - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  ::lseek(fd, 0, SEEK_SET);
  const portcullis::VerifyResult r = portcullis::verifyAuditLog(fd, keys);
  ::close(fd);
  // Intact means every line was a well-formed, terminated record (a torn line
  // is only accepted when an audit.torn record covers it).
  if (r.ok && !all_parse && r.torn_accepted == 0) std::abort();
  return 0;
}
