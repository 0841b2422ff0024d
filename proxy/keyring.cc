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
#include <numeric>
#include <optional>
#include <toml++/toml.h>

#include "proxy/errno_message.h"
#include "proxy/wiped_string.h"

namespace portcullis {

namespace {

std::string octal(unsigned mode) {
  char buf[8];
  (void)std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);  // at most 4 digits: cannot truncate
  return buf;
}

constexpr size_t kMaxKeyringBytes = size_t{1} << 20;
constexpr size_t kKeyB64Len = 44;  // base64 of a 32-byte key: 43 characters and one '='

bool isBase64Char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

// The text of a keyring as toml++ gets it. toml++ holds the strings it parses
// in std::strings that it grows (its lexer appends a character at a time)
// and frees without wiping, so it must never see a key: each 44-character
// run of a quote, 43 base64 characters, '=' and the same quote is replaced
// by a placeholder of the same length, '*'s and a decimal number and '='.
// The placeholder is not base64 and, with its '=', not a valid key id.
// Nothing else changes, so toml++ finds the same structure and reports its
// errors at the same lines (a message that quotes a run quotes the
// placeholder); equal runs get equal placeholders and different runs
// different ones, so it also finds the same redefinitions. `text` must
// outlive the object.
class MaskedKeyring {
 public:
  explicit MaskedKeyring(std::string_view text) : text_(text) {
    masked_.s.assign(text);
    line_starts_.push_back(0);
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\n') {
        line_starts_.push_back(i + 1);
      } else if ((text[i] == '"' || text[i] == '\'') && i + kKeyB64Len + 1 < text.size() &&
                 text[i + kKeyB64Len] == '=' && text[i + kKeyB64Len + 1] == text[i] &&
                 std::all_of(text.data() + i + 1, text.data() + i + kKeyB64Len, isBase64Char)) {
        runs_.push_back(i + 1);
        i += kKeyB64Len;  // the closing quote may open the next run
      }
    }
    // Runs sorted by their text give each distinct text its number.
    std::vector<size_t> by_text(runs_.size());
    std::iota(by_text.begin(), by_text.end(), size_t{0});
    std::sort(by_text.begin(), by_text.end(), [&](size_t a, size_t b) { return run(a) < run(b); });
    size_t number = 0;
    for (size_t i = 0; i < by_text.size(); ++i) {
      if (i > 0 && run(by_text[i]) != run(by_text[i - 1])) ++number;
      char* begin = masked_.s.data() + runs_[by_text[i]];
      char* p = begin + kKeyB64Len - 1;  // the '=' stays
      size_t n = number;
      do {
        *--p = char('0' + n % 10);
        n /= 10;
      } while (n != 0);
      std::fill(begin, p, '*');
    }
  }

  std::string_view masked() const { return masked_.s; }

  // The file's text of the string whose opening delimiter toml++ reports at
  // `begin` and whose parsed value is `parsed`, when that string is exactly
  // one masked run: then `parsed` is its placeholder. std::nullopt otherwise
  // (`parsed` is then what the file says).
  std::optional<std::string_view> original(const toml::source_position& begin, std::string_view parsed) const {
    if (begin.line == 0 || begin.line > line_starts_.size() || begin.column == 0) return std::nullopt;
    size_t at = line_starts_[begin.line - 1] + (begin.column - 1);  // ASCII: a column is a byte
    if (at >= text_.size()) return std::nullopt;
    const std::string_view from = text_.substr(at);
    at += from.starts_with("\"\"\"") || from.starts_with("'''") ? 3 : 1;
    if (!std::binary_search(runs_.begin(), runs_.end(), at) || parsed != masked().substr(at, kKeyB64Len)) {
      return std::nullopt;
    }
    return text_.substr(at, kKeyB64Len);
  }

 private:
  std::string_view run(size_t i) const { return text_.substr(runs_[i], kKeyB64Len); }

  std::string_view text_;
  WipedString masked_;
  std::vector<size_t> runs_;         // offsets of the masked runs (after the quote), ascending
  std::vector<size_t> line_starts_;  // offset of each line's first byte
};

// The entries of `t` in the order toml++ would have iterated them in had it
// parsed the file's text (its tables are std::maps ordered by key), so that
// the first error found is the one found without masking.
std::vector<std::pair<std::string_view, const toml::node*>> inFileKeyOrder(const toml::table& t,
                                                                           const MaskedKeyring& m) {
  std::vector<std::pair<std::string_view, const toml::node*>> entries;
  entries.reserve(t.size());
  for (const auto& [key, node] : t) {
    entries.emplace_back(m.original(key.source().begin, key.str()).value_or(key.str()), &node);
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return entries;
}

// Wipes every string value in the tree under `n` (toml++ frees them as they are).
void wipeStrings(toml::node& n) {
  if (toml::value<std::string>* s = n.as_string()) {
    std::string& v = s->get();
    if (!v.empty()) OPENSSL_cleanse(v.data(), v.size());
  } else if (toml::table* t = n.as_table()) {
    for (auto&& [key, child] : *t) wipeStrings(child);
  } else if (toml::array* a = n.as_array()) {
    for (toml::node& child : *a) wipeStrings(child);
  }
}

// toml++'s message for a redefined key quotes the key's source text
// ("cannot redefine existing string '<key>'", "... array '<key>' as table",
// "cannot insert '<key>' into existing inline table"). Masking hides a key
// pasted there only in its quoted, padded form, so the quoted text is cut
// from these messages whatever it is: the line says which key it was.
std::string withoutQuotedKey(std::string_view description) {
  if (description.find("cannot redefine existing ") == std::string_view::npos &&
      description.find("cannot insert '") == std::string_view::npos) {
    return std::string(description);
  }
  const size_t open = description.find('\'');
  const size_t close = description.rfind('\'');
  if (open == std::string_view::npos || close == open) return std::string(description);
  std::string out(description.substr(0, open));
  while (!out.empty() && out.back() == ' ') out.pop_back();
  out.append(description.substr(close + 1));
  return out;
}

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

void KeyringData::add(std::string id, const MasterKey& key) {
  if (keys.size() == keys.capacity()) {
    std::vector<std::pair<std::string, MasterKey>> grown;
    grown.reserve(std::max<size_t>(4, keys.size() * 2));
    for (auto& k : keys) {
      grown.emplace_back(std::move(k.first), k.second);
      OPENSSL_cleanse(k.second.data(), k.second.size());
    }
    keys.swap(grown);  // `grown` frees the wiped block
  }
  keys.emplace_back(std::move(id), key);
  // Member-wise swaps (std::array swaps byte by byte): no temporary copy of a key.
  for (size_t i = keys.size() - 1; i > 0 && keys[i].first < keys[i - 1].first; --i) keys[i].swap(keys[i - 1]);
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
  WipedString text;
  // The whole file in one block when it does not grow while it is read.
  text.s.reserve(std::min(size_t(st.st_size), kMaxKeyringBytes) + 1);
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
    appendWiped(text.s, std::string_view(chunk, size_t(r)));
    if (text.s.size() > kMaxKeyringBytes) {
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
  const MaskedKeyring masked(text.s);
  toml::parse_result parsed = toml::parse(masked.masked(), path);
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    error = path + ":" + std::to_string(e.source().begin.line) + ": " + withoutQuotedKey(e.description());
    return false;
  }
  toml::table& tree = parsed.table();
  // Declared after `parsed`: wipes the tree's strings before it is freed.
  struct TreeWiper {
    toml::table& t;
    ~TreeWiper() { wipeStrings(t); }
  } wipe_tree{tree};
  const toml::table& root = tree;
  auto at = [&](const toml::node& n) { return path + ":" + std::to_string(n.source().begin.line) + ": "; };
  for (const auto& [key, node] : inFileKeyOrder(root, masked)) {
    if (key != "active" && key != "keys") {
      error = at(*node) + "unknown key (expected only active and [keys])";
      return false;
    }
  }
  KeyringData data;
  const toml::node* keys_node = root.get("keys");
  if (keys_node == nullptr || !keys_node->is_table()) {
    error = path + ": missing [keys] table";
    return false;
  }
  // Taken in key order, the ids arrive sorted, so no sort moves a key; reserved
  // up front, the vector never reallocates.
  data.keys.reserve(keys_node->as_table()->size());
  for (const auto& [id, node] : inFileKeyOrder(*keys_node->as_table(), masked)) {
    if (!validKeyringId(id)) {
      error = at(*node) + "in [keys]: key id must be 1-64 characters of A-Z a-z 0-9 . _ - (id = \"<base64 key>\")";
      return false;
    }
    const std::optional<std::string_view> v = node->value<std::string_view>();
    if (!v) {
      error = at(*node) + "in [keys]: expected a base64 string";
      return false;
    }
    MasterKey k;
    if (!decodeKey(masked.original(node->source().begin, *v).value_or(*v), k)) {
      error = at(*node) + "in [keys]: not base64 of exactly 32 bytes";
      return false;
    }
    data.keys.emplace_back(id, k);
    OPENSSL_cleanse(k.data(), k.size());
  }
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
  out.active.swap(data.active);
  out.keys.swap(data.keys);  // `data` wipes the keys `out` held
  return true;
}

bool writeKeyring(const std::string& path, const KeyringData& data, std::string& error) {
  if (!data.active.empty() && data.find(data.active) == nullptr) {
    error = "active key '" + data.active + "' is not in the keyring";
    return false;
  }
  static constexpr std::string_view kHeader =
      "# Portcullis keyring (SPEC section 7): master keys for upload encryption.\n"
      "# Mode 0600. Keep old keys after rotation: older uploads need them.\n";
  size_t size = kHeader.size() + data.active.size() + 20;  // + `active = ""`, `[keys]`
  for (const auto& [id, key] : data.keys) size += id.size() + kKeyB64Len + 8;  // + `"" = ""` and '\n'
  WipedString text;
  text.s.reserve(size);  // the exact size: appendWiped never has to grow it
  appendWiped(text.s, kHeader);
  appendWiped(text.s, "active = \"");
  appendWiped(text.s, data.active);
  appendWiped(text.s, "\"\n\n[keys]\n");
  for (const auto& [id, key] : data.keys) {
    if (!validKeyringId(id)) {
      error = "invalid key id '" + id + "'";
      return false;
    }
    uint8_t b64[48];
    const size_t n = EVP_EncodeBlock(b64, key.data(), key.size());
    appendWiped(text.s, "\"");
    appendWiped(text.s, id);
    appendWiped(text.s, "\" = \"");
    appendWiped(text.s, std::string_view(reinterpret_cast<const char*>(b64), n));
    appendWiped(text.s, "\"\n");
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
