#include "proxy/toml_guard.h"
#include "proxy/keyring.h"

#include <fcntl.h>
#include <openssl/base64.h>
#include <openssl/mem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <toml++/toml.h>

#include "proxy/errno_message.h"

namespace portcullis {

namespace {

std::string octal(unsigned mode) {
  char buf[8];
  (void)std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);  // at most 4 digits: cannot truncate
  return buf;
}

struct Wiped {
  std::string s;
  ~Wiped() {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  }
};

bool decodeKey(std::string_view b64, MasterKey& out) {
  size_t max_len = 0;
  if (b64.size() != 44 || !EVP_DecodedLength(&max_len, b64.size())) return false;
  uint8_t tmp[48];
  size_t len = 0;
  const bool ok = max_len <= sizeof(tmp) &&
                  EVP_DecodeBase64(tmp, &len, sizeof(tmp), reinterpret_cast<const uint8_t*>(b64.data()), b64.size()) &&
                  len == out.size();
  if (ok) std::memcpy(out.data(), tmp, out.size());
  OPENSSL_cleanse(tmp, sizeof(tmp));
  return ok;
}

}  // namespace

bool validKeyringId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

KeyringData::~KeyringData() {
  for (auto& k : keys) OPENSSL_cleanse(k.second.data(), k.second.size());
}

const MasterKey* KeyringData::find(std::string_view id) const {
  for (const auto& k : keys) {
    if (k.first == id) return &k.second;
  }
  return nullptr;
}

bool readKeyring(const std::string& path, KeyringData& out, std::string& error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = "keyring " + path + ": " + errnoMessage(errno);
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    error = "keyring " + path + ": not a regular file";
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    error = "keyring " + path + ": mode " + octal(st.st_mode) +
            " lets group or others access it; run chmod 600 " + path;
    return false;
  }
  Wiped text;
  char chunk[4096];
  for (;;) {
    const ssize_t r = ::read(fd, chunk, sizeof(chunk));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      error = "keyring " + path + ": " + errnoMessage(errno);
      ::close(fd);
      OPENSSL_cleanse(chunk, sizeof(chunk));
      return false;
    }
    if (r == 0) break;
    text.s.append(chunk, size_t(r));
    if (text.s.size() > (1u << 20)) {
      ::close(fd);
      OPENSSL_cleanse(chunk, sizeof(chunk));
      error = "keyring " + path + ": larger than 1 MiB";
      return false;
    }
  }
  ::close(fd);
  OPENSSL_cleanse(chunk, sizeof(chunk));

  if (uint32_t bad = firstNonAsciiLine(text.s)) {
    error = nonAsciiError(path, bad);
    return false;
  }
  toml::parse_result parsed = toml::parse(text.s, path);
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    error = path + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description());
    return false;
  }
  const toml::table& root = parsed.table();
  auto at = [&](const toml::node& n) { return path + ":" + std::to_string(n.source().begin.line) + ": "; };
  for (const auto& [key, node] : root) {
    if (key.str() != "active" && key.str() != "keys") {
      error = at(node) + "unknown key (expected only active and [keys])";
      return false;
    }
  }
  KeyringData data;
  const toml::node* keys_node = root.get("keys");
  if (keys_node == nullptr || !keys_node->is_table()) {
    error = path + ": missing [keys] table";
    return false;
  }
  for (const auto& [key, node] : *keys_node->as_table()) {
    const std::string id(key.str());
    if (!validKeyringId(id)) {
      error = at(node) + "in [keys]: key id must be 1-64 characters of A-Z a-z 0-9 . _ - (id = \"<base64 key>\")";
      return false;
    }
    const std::optional<std::string_view> v = node.value<std::string_view>();
    if (!v) {
      error = at(node) + "in [keys]: expected a base64 string";
      return false;
    }
    MasterKey k;
    if (!decodeKey(*v, k)) {
      error = at(node) + "in [keys]: not base64 of exactly 32 bytes";
      return false;
    }
    data.keys.emplace_back(id, k);
    OPENSSL_cleanse(k.data(), k.size());
  }
  std::sort(data.keys.begin(), data.keys.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  const toml::node* active = root.get("active");
  if (active == nullptr || !active->is_string()) {
    error = path + ": no active key (expected active = \"<key id>\")";
    return false;
  }
  data.active = std::string(*active->value<std::string_view>());
  if (data.find(data.active) == nullptr) {
    error = at(*active) + "the active key id is not in [keys]";
    return false;
  }
  out.active = data.active;
  out.keys = data.keys;
  return true;
}

bool writeKeyring(const std::string& path, const KeyringData& data, std::string& error) {
  if (!data.active.empty() && data.find(data.active) == nullptr) {
    error = "active key '" + data.active + "' is not in the keyring";
    return false;
  }
  Wiped text;
  text.s = "# Portcullis keyring (SPEC section 7): master keys for upload encryption.\n"
           "# Mode 0600. Keep old keys after rotation: older uploads need them.\n";
  text.s += "active = \"" + data.active + "\"\n\n[keys]\n";
  for (const auto& [id, key] : data.keys) {
    if (!validKeyringId(id)) {
      error = "invalid key id '" + id + "'";
      return false;
    }
    uint8_t b64[48];
    const size_t n = EVP_EncodeBlock(b64, key.data(), key.size());
    text.s += "\"" + id + "\" = \"";
    text.s.append(reinterpret_cast<const char*>(b64), n);
    text.s += "\"\n";
    OPENSSL_cleanse(b64, sizeof(b64));
  }

  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    error = "keyring " + path + ": cannot create a temporary file: " + errnoMessage(errno);
    return false;
  }
  auto bail = [&](const char* what) {
    error = "keyring " + path + ": " + what + ": " + errnoMessage(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    return false;
  };
  if (::fchmod(fd, 0600) != 0) return bail("chmod");
  size_t off = 0;
  while (off < text.s.size()) {
    const ssize_t w = ::write(fd, text.s.data() + off, text.s.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return bail("write");
    off += size_t(w);
  }
  if (::fsync(fd) != 0) return bail("fsync");
  if (::close(fd) != 0) {
    error = "keyring " + path + ": close: " + errnoMessage(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    error = "keyring " + path + ": rename: " + errnoMessage(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

std::shared_ptr<const LocalKeyring> LocalKeyring::load(const std::string& path, std::string& error) {
  std::shared_ptr<LocalKeyring> k(new LocalKeyring());
  if (!readKeyring(path, k->data_, error)) return nullptr;
  k->path_ = path;
  return k;
}

bool LocalKeyring::masterKey(std::string_view id, uint8_t* out) const {
  const MasterKey* k = data_.find(id);
  if (k == nullptr) return false;
  std::memcpy(out, k->data(), k->size());
  return true;
}

std::vector<std::string> LocalKeyring::keyIds() const {
  std::vector<std::string> ids;
  for (const auto& k : data_.keys) ids.push_back(k.first);
  return ids;
}

}  // namespace portcullis
