// Master keys for upload encryption (SPEC §7). The filter and the decrypt
// tool see only the KeyProvider interface, so a KMS- or Vault-backed provider
// can replace the local TOML keyring without touching them.
//
// Keyring file (TOML, mode 0600):
//
//   active = "k2"
//   [keys]
//   k1 = "<base64 of 32 bytes>"
//   k2 = "<base64 of 32 bytes>"
//
// Old keys stay in the file after rotation so older uploads still decrypt.
// Key material is never printed or put into an error message.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis {

using MasterKey = std::array<uint8_t, 32>;

class KeyProvider {
 public:
  virtual ~KeyProvider() = default;
  // Id of the key new uploads are encrypted under; never empty.
  virtual const std::string& activeKeyId() const = 0;
  // Copies the 32-byte master key `id` into `out` and returns true, or
  // returns false when there is no such key. Thread-safe (const, immutable).
  virtual bool masterKey(std::string_view id, uint8_t* out) const = 0;
};

// Key ids accepted in a keyring: 1..64 characters of [A-Za-z0-9._-].
bool validKeyringId(std::string_view id);

// The parsed contents of a keyring file. The destructor wipes the keys.
//
// No copy of a key is left in freed heap memory: a KeyringData is neither
// copied nor moved (each would be one more copy to account for), and keys are
// added with add(), whose growth wipes the storage it leaves. A caller that
// grows `keys` directly (push_back, emplace_back, insert beyond the reserved
// capacity) frees a block that still holds keys.
struct KeyringData {
  std::string active;                                   // may be empty only while building
  std::vector<std::pair<std::string, MasterKey>> keys;  // sorted by id, ids unique
  KeyringData() = default;
  KeyringData(const KeyringData&) = delete;
  KeyringData& operator=(const KeyringData&) = delete;
  KeyringData(KeyringData&&) = delete;
  KeyringData& operator=(KeyringData&&) = delete;
  ~KeyringData();
  const MasterKey* find(std::string_view id) const;
  // Inserts `key` under `id`, which must not be in `keys` yet, at its sorted
  // place. When the storage must grow, the keys are copied to a larger block
  // and the old block is wiped before it is freed; the keys already held
  // are moved by swaps, never through a temporary copy.
  void add(std::string id, const MasterKey& key);
};

// Reads and validates a keyring file. Refuses, with a one-line message naming
// the file (and line where known), a file that is not a regular file, is
// readable or writable by group or others, does not parse, has a bad key id,
// bad base64, a key that is not 32 bytes, unknown top-level keys, or an
// `active` that is missing or names no key in [keys]. The message names the
// line and what is wrong, never a line's id or value text: a key pasted where
// an id or the active id belongs must not reach stderr or the audit log.
// On success `out` holds the file's keys and the keys it held before are
// wiped; on failure `out` is unchanged. Every heap block that held the file's
// text, a key or its base64 text is wiped before it is freed, toml++'s
// included: toml++ parses a copy of the text in which each quoted 44-character
// base64 run ending in '=' (the form of a 32-byte key) is replaced by a
// placeholder of the same length, and a [keys] value that is such a run is
// decoded from the file's text. A key written another way (with escape
// sequences, in a multi-line string that starts with a newline, or without
// its '=' where it does not belong; writeKeyring never does) is decoded from
// toml++'s value, which is wiped, but toml++'s lexer may have freed partial
// copies of it, as it may of any refused file's text.
bool readKeyring(const std::string& path, KeyringData& out, std::string& error);

// Writes `data` to `path` atomically: a temporary file in the same
// directory, mode 0600, fsync, rename over `path`. Creates the file if absent.
// The text it builds is wiped, and never left in a freed block while it grows.
bool writeKeyring(const std::string& path, const KeyringData& data, std::string& error);

// The local keyring file as a KeyProvider. Immutable after load(); a reload
// builds a new object (the config snapshot swaps the pointer).
class LocalKeyring final : public KeyProvider {
 public:
  static std::shared_ptr<const LocalKeyring> load(const std::string& path, std::string& error);

  const std::string& activeKeyId() const override { return data_.active; }
  bool masterKey(std::string_view id, uint8_t* out) const override;
  std::vector<std::string> keyIds() const;
  const std::string& path() const { return path_; }

 private:
  LocalKeyring() = default;
  std::string path_;
  KeyringData data_;
};

}  // namespace portcullis
