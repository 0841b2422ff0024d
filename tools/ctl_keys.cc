// portcullisctl keys gen / decrypt (SPEC §4, §7).
//
//   keys gen --keyring FILE [--id ID] [--activate]
//     Adds a fresh random 32-byte master key. The default id is k<N> with N one
//     more than the largest existing k<number>. The first key of a keyring is
//     made active; --activate makes the new key active. The file is created
//     with mode 0600 if absent and always replaced atomically, under the
//     writers' lock <FILE>.lock (proxy/file_lock.h), so concurrent runs each
//     add their key.
//
//   decrypt --keyring FILE < upload.pcx > upload.plain
//     Streams stdin to stdout; a segment's plaintext is written only after its
//     tag verifies. Any rejection: exit 1 and one line on stderr.
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "proxy/errno_message.h"
#include "proxy/file_lock.h"
#include "proxy/keyring.h"
#include "tools/ctl.h"
#include "tools/pcx1/pcx1.h"

namespace {

using portcullis::ctl::Args;

int usageError(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "portcullisctl %s: %s\n", cmd, msg.c_str());
  return 2;
}

int keysGen(const Args& args) {
  std::string keyring, id;
  bool activate = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "--keyring" || a == "--id") && i + 1 < args.size()) {
      (a == "--keyring" ? keyring : id) = args[++i];
    } else if (a == "--activate") {
      activate = true;
    } else {
      return usageError("keys gen", "unexpected argument '" + a +
                                        "' (usage: keys gen --keyring FILE [--id ID] [--activate])");
    }
  }
  if (keyring.empty()) return usageError("keys gen", "--keyring FILE is required");
  if (!id.empty() && !portcullis::validKeyringId(id)) {
    return usageError("keys gen", "key id must be 1-64 characters of A-Z a-z 0-9 . _ -");
  }

  portcullis::KeyringData data;
  std::string error;
  // Held from the read to the rename: the id choice and the new file build
  // on the keyring as it is, not as another run is about to replace it.
  portcullis::FileLock lock;
  if (!lock.lock(keyring, error)) {
    std::fprintf(stderr, "portcullisctl keys gen: %s\n", error.c_str());
    return 1;
  }
  struct stat st {};
  if (::stat(keyring.c_str(), &st) == 0) {
    if (!portcullis::readKeyring(keyring, data, error)) {
      std::fprintf(stderr, "portcullisctl keys gen: %s\n", error.c_str());
      return 1;
    }
  } else if (errno != ENOENT) {
    std::fprintf(stderr, "portcullisctl keys gen: keyring %s: %s\n", keyring.c_str(),
                 portcullis::errnoMessage(errno).c_str());
    return 1;
  }

  if (id.empty()) {
    unsigned long next = 1;
    for (const auto& k : data.keys) {
      const std::string& kid = k.first;
      if (kid.size() > 1 && kid.size() < 12 && kid[0] == 'k' &&
          kid.find_first_not_of("0123456789", 1) == std::string::npos) {
        next = std::max(next, std::strtoul(kid.c_str() + 1, nullptr, 10) + 1);
      }
    }
    id = "k" + std::to_string(next);
    while (data.find(id) != nullptr) id = "k" + std::to_string(++next);
  } else if (data.find(id) != nullptr) {
    std::fprintf(stderr, "portcullisctl keys gen: key '%s' already exists in %s\n", id.c_str(), keyring.c_str());
    return 1;
  }

  portcullis::MasterKey key;
  if (!RAND_bytes(key.data(), key.size())) {
    std::fprintf(stderr, "portcullisctl keys gen: the random generator failed\n");
    return 1;
  }
  data.add(id, key);
  OPENSSL_cleanse(key.data(), key.size());
  const bool first = data.active.empty();
  if (first || activate) data.active = id;
  if (!portcullis::writeKeyring(keyring, data, error)) {
    std::fprintf(stderr, "portcullisctl keys gen: %s\n", error.c_str());
    return 1;
  }
  if (data.active == id) {
    std::printf("key %s added to %s (active)\n", id.c_str(), keyring.c_str());
  } else {
    std::printf("key %s added to %s; active key remains %s (use --activate to switch)\n", id.c_str(),
                keyring.c_str(), data.active.c_str());
  }
  return 0;
}

int keys(const Args& args) {
  if (args.empty() || args[0] != "gen") {
    return usageError("keys", "usage: keys gen --keyring FILE [--id ID] [--activate]");
  }
  return keysGen(Args(args.begin() + 1, args.end()));
}

bool writeAll(const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(STDOUT_FILENO, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

int decrypt(const Args& args) {
  std::string keyring;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--keyring" && i + 1 < args.size()) {
      keyring = args[++i];
    } else {
      return usageError("decrypt", "unexpected argument '" + args[i] + "' (usage: decrypt --keyring FILE < in > out)");
    }
  }
  if (keyring.empty()) return usageError("decrypt", "--keyring FILE is required");
  std::string error;
  std::shared_ptr<const portcullis::LocalKeyring> ring = portcullis::LocalKeyring::load(keyring, error);
  if (!ring) {
    std::fprintf(stderr, "portcullisctl decrypt: %s\n", error.c_str());
    return 1;
  }
  portcullis::pcx1::Opener opener(
      [&ring](std::string_view id, uint8_t* out) { return ring->masterKey(id, out); });
  auto reject = [&]() {
    std::fprintf(stderr, "portcullisctl decrypt: rejected: %s\n", opener.reason().c_str());
    return 1;
  };
  auto flush = [&]() {
    auto r = opener.ready();
    const bool ok = writeAll(r.data(), r.size());
    opener.consumeReady();
    return ok;
  };
  std::vector<uint8_t> in(256 * 1024);
  for (;;) {
    const ssize_t r = ::read(STDIN_FILENO, in.data(), in.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      std::fprintf(stderr, "portcullisctl decrypt: read: %s\n", portcullis::errnoMessage(errno).c_str());
      return 1;
    }
    if (r == 0) break;
    const uint8_t* p = in.data();
    size_t n = size_t(r);
    while (n > 0) {
      const size_t k = opener.feed(p, n);
      p += k;
      n -= k;
      if (opener.error() != portcullis::pcx1::Error::kOk) return reject();
      if (!opener.ready().empty() && !flush()) {
        std::fprintf(stderr, "portcullisctl decrypt: write: %s\n", portcullis::errnoMessage(errno).c_str());
        return 1;
      }
    }
  }
  if (opener.finish() != portcullis::pcx1::Error::kOk) return reject();
  if (!flush()) {
    std::fprintf(stderr, "portcullisctl decrypt: write: %s\n", portcullis::errnoMessage(errno).c_str());
    return 1;
  }
  return 0;
}

const portcullis::ctl::CommandRegistration kKeys("keys", keys);
const portcullis::ctl::CommandRegistration kDecrypt("decrypt", decrypt);

}  // namespace
