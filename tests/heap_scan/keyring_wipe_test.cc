// Master keys are never left behind in freed heap memory (SPEC §7): the
// keyring reader, the writer, LocalKeyring and `portcullisctl keys gen` wipe
// every heap block that held a key or its base64 text before it is freed.
//
// This binary replaces the global operator new and delete (every form) with
// versions on plain malloc/free that keep each block's requested size in a
// header and zero each new block. While a test has the scan armed, every
// block handed to operator delete is searched, before it is freed, for any
// 16-byte window of the raw bytes or of the base64 text of the test keys. A
// hit is recorded and fails the test. C++ containers (std::string, std::vector, toml++'s tree and
// lexer buffers) all allocate through operator new; BoringSSL's own
// allocations go through OPENSSL_malloc, which cleanses on free.
#include <gtest/gtest.h>
#include <openssl/base64.h>
#include <openssl/mem.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "proxy/keyring.h"
#include "proxy/wiped_string.h"
#include "tests/unit/temp_dir.h"
#include "tools/ctl.h"

namespace {

// --- The freed-block scanner -------------------------------------------------

constexpr size_t kKeys = 12;         // test keys: enough for several vector growths
constexpr size_t kWindow = 16;       // a 16-byte piece of a key is a hit
constexpr size_t kB64Len = 44;       // base64 of 32 bytes
constexpr size_t kMinHeader = 16;    // keeps malloc's 16-byte alignment

std::array<portcullis::MasterKey, kKeys> g_raw{};
std::array<std::array<char, kB64Len + 1>, kKeys> g_b64{};
std::atomic<bool> g_armed{false};
std::atomic<int> g_hits{0};
// The first hit, written only by the delete that raised g_hits from 0.
size_t g_hit_key = 0, g_hit_block = 0, g_hit_offset = 0;
bool g_hit_base64 = false;

void record(size_t key, bool base64, size_t block, size_t offset) {
  if (g_hits.fetch_add(1) == 0) {
    g_hit_key = key;
    g_hit_base64 = base64;
    g_hit_block = block;
    g_hit_offset = offset;
  }
}

// Searches `n` bytes at `p` for a window of a needle; no allocation here.
void scanFreed(const void* p, size_t n) {
  if (!g_armed.load(std::memory_order_relaxed) || n < kWindow) return;
  for (size_t k = 0; k < kKeys; ++k) {
    for (size_t w = 0; w + kWindow <= g_raw[k].size(); ++w) {
      if (const void* at = memmem(p, n, g_raw[k].data() + w, kWindow)) {
        record(k, false, n, size_t(static_cast<const char*>(at) - static_cast<const char*>(p)));
        return;
      }
    }
    for (size_t w = 0; w + kWindow <= kB64Len; ++w) {
      if (const void* at = memmem(p, n, g_b64[k].data() + w, kWindow)) {
        record(k, true, n, size_t(static_cast<const char*>(at) - static_cast<const char*>(p)));
        return;
      }
    }
  }
}

size_t headerFor(size_t align) { return std::max(kMinHeader, align); }

// A block of `n` zero bytes aligned to `align` (0: default); its size sits
// in the 8 bytes before it. Zeroed so that what a scan finds in a block was
// written there by its owner, not left by an earlier user of the memory.
void* allocate(size_t n, size_t align) {
  const size_t header = headerFor(align);
  void* base = nullptr;
  if (posix_memalign(&base, header, header + n) != 0) return nullptr;
  auto* user = static_cast<unsigned char*>(base) + header;
  std::memcpy(user - sizeof(size_t), &n, sizeof(size_t));
  std::memset(user, 0, n);
  return user;
}

void release(void* p, size_t align) {
  if (p == nullptr) return;
  auto* user = static_cast<unsigned char*>(p);
  size_t n = 0;
  std::memcpy(&n, user - sizeof(size_t), sizeof(size_t));
  scanFreed(user, n);
  free(user - headerFor(align));
}

void* allocateOrThrow(size_t n, size_t align) {
  if (void* p = allocate(n, align)) return p;
  throw std::bad_alloc();
}

}  // namespace

// Every form is replaced. An aligned delete is given the alignment its new
// was given, which locates the header.
void* operator new(size_t n) { return allocateOrThrow(n, 0); }
void* operator new[](size_t n) { return allocateOrThrow(n, 0); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void* operator new(size_t n, std::align_val_t a) { return allocateOrThrow(n, size_t(a)); }
void* operator new[](size_t n, std::align_val_t a) { return allocateOrThrow(n, size_t(a)); }
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return allocate(n, size_t(a)); }
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return allocate(n, size_t(a)); }
void operator delete(void* p) noexcept { release(p, 0); }
void operator delete[](void* p) noexcept { release(p, 0); }
void operator delete(void* p, size_t) noexcept { release(p, 0); }
void operator delete[](void* p, size_t) noexcept { release(p, 0); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p, 0); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p, 0); }
void operator delete(void* p, std::align_val_t a) noexcept { release(p, size_t(a)); }
void operator delete[](void* p, std::align_val_t a) noexcept { release(p, size_t(a)); }
void operator delete(void* p, size_t, std::align_val_t a) noexcept { release(p, size_t(a)); }
void operator delete[](void* p, size_t, std::align_val_t a) noexcept { release(p, size_t(a)); }
void operator delete(void* p, std::align_val_t a, const std::nothrow_t&) noexcept { release(p, size_t(a)); }
void operator delete[](void* p, std::align_val_t a, const std::nothrow_t&) noexcept { release(p, size_t(a)); }

namespace portcullis {
namespace {

using testing_support::TempDir;

// Arms the scan for its lifetime; the hits it saw are checked with clean().
class Scan {
 public:
  Scan() {
    g_hits = 0;
    g_armed = true;
  }
  ~Scan() { g_armed = false; }
  Scan(const Scan&) = delete;
  Scan& operator=(const Scan&) = delete;
};

::testing::AssertionResult noKeyWasFreed() {
  if (g_hits == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << g_hits << " freed heap block(s) held key material; first: a " << g_hit_block
         << "-byte block with a piece of test key " << g_hit_key << (g_hit_base64 ? " (base64)" : " (raw bytes)")
         << " at offset " << g_hit_offset;
}

std::string keyId(size_t k) { return "k" + std::to_string(k + 1); }

class KeyringWipeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (size_t k = 0; k < kKeys; ++k) {
      for (size_t i = 0; i < 32; ++i) g_raw[k][i] = uint8_t(0x9d * (k + 1) + 0x35 * i + 7);
      EVP_EncodeBlock(reinterpret_cast<uint8_t*>(g_b64[k].data()), g_raw[k].data(), g_raw[k].size());
    }
  }

  void SetUp() override { path_ = dir_.path + "/keyring.toml"; }

  // A keyring with every test key, declared out of id order and in every
  // TOML string form writeKeyring or an operator would use, followed by a
  // comment long enough that the file is read in several chunks.
  void writeAllKeys() {
    std::string text = "# test keyring\nactive = \"k5\"\n\n[keys]\n";
    const std::array<size_t, kKeys> order = {6, 2, 9, 0, 11, 4, 8, 1, 10, 3, 7, 5};
    for (size_t i = 0; i < kKeys; ++i) {
      const size_t k = order[i];
      const std::string b64(g_b64[k].data(), kB64Len);
      const std::string quote = i % 4 == 1 ? "'" : i % 4 == 3 ? (i % 8 == 3 ? "\"\"\"" : "'''") : "\"";
      text += (i % 2 == 0 ? keyId(k) : "\"" + keyId(k) + "\"") + " = " + quote + b64 + quote + "\n";
    }
    text += "# " + std::string(9000, '-') + "\n";
    writeFile(text);
  }

  // Writes `text`, then wipes the test's own copy so that freeing it (with
  // the scan not armed anyway) is not what a test measures.
  void writeFile(std::string& text) {
    std::ofstream(path_, std::ios::trunc) << text;
    ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
    OPENSSL_cleanse(text.data(), text.size());
  }

  TempDir dir_;
  std::string path_;
};

// Self-test of the instrument: a freed string that held a key's base64 text,
// or just the first 16 characters of it, and a freed copy of the raw key are
// each seen.
TEST_F(KeyringWipeTest, ScannerSeesFreedKeyMaterial) {
  for (const size_t len : {kB64Len, kWindow}) {
    auto* s = new std::string(64, '.');  // longer than the inline buffer: on the heap
    s->replace(0, len, g_b64[3].data(), len);
    {
      Scan scan;
      delete s;
    }
    EXPECT_EQ(g_hits, 1) << len;
    EXPECT_EQ(g_hit_key, 3u);
    EXPECT_TRUE(g_hit_base64);
  }
  auto* v = new std::vector<MasterKey>(4, g_raw[7]);
  {
    Scan scan;
    delete v;
  }
  EXPECT_EQ(g_hits, 1);
  EXPECT_EQ(g_hit_key, 7u);
  EXPECT_FALSE(g_hit_base64);
  auto* clean = new std::vector<MasterKey>(4, g_raw[7]);
  for (auto& k : *clean) OPENSSL_cleanse(k.data(), k.size());
  {
    Scan scan;
    delete clean;
  }
  EXPECT_EQ(g_hits, 0);
}

// The growth readKeyring falls back on when the file grows while it is read
// (its string is reserved from the size fstat reports).
TEST_F(KeyringWipeTest, AppendWipedGrowsWithoutLeavingTheOldBlock) {
  {
    Scan scan;
    WipedString text;
    for (size_t k = 0; k < kKeys; ++k) {
      appendWiped(text.s, "k = \"");
      appendWiped(text.s, std::string_view(g_b64[k].data(), kB64Len));
      appendWiped(text.s, "\"\n");
    }
    EXPECT_EQ(text.s.size(), kKeys * (kB64Len + 7));
    EXPECT_EQ(std::string_view(text.s).substr(5, kB64Len), std::string_view(g_b64[0].data(), kB64Len));
  }
  EXPECT_TRUE(noKeyWasFreed());
}

TEST_F(KeyringWipeTest, LoadAndDestroyLeaveNoKeyInFreedMemory) {
  writeAllKeys();
  std::string error;
  error.reserve(256);
  {
    Scan scan;
    std::shared_ptr<const LocalKeyring> ring = LocalKeyring::load(path_, error);
    ASSERT_NE(ring, nullptr) << error;
    uint8_t key[32];
    for (size_t k = 0; k < kKeys; ++k) {
      ASSERT_TRUE(ring->masterKey(keyId(k), key)) << keyId(k);
      EXPECT_EQ(std::memcmp(key, g_raw[k].data(), 32), 0) << keyId(k);
    }
    OPENSSL_cleanse(key, sizeof(key));
    EXPECT_EQ(ring->activeKeyId(), "k5");
    ring.reset();
  }
  EXPECT_TRUE(noKeyWasFreed());
}

// readKeyring into a KeyringData that already holds keys: the keys it held
// are wiped, not dropped with a freed vector.
TEST_F(KeyringWipeTest, ReadOverHeldKeysLeavesNoKeyInFreedMemory) {
  writeAllKeys();
  KeyringData data;
  data.keys.reserve(1);
  data.keys.emplace_back("old", g_raw[0]);
  std::string error;
  error.reserve(256);
  {
    Scan scan;
    ASSERT_TRUE(readKeyring(path_, data, error)) << error;
  }
  EXPECT_TRUE(noKeyWasFreed());
  ASSERT_EQ(data.keys.size(), kKeys);
  EXPECT_TRUE(std::is_sorted(data.keys.begin(), data.keys.end(),
                             [](const auto& a, const auto& b) { return a.first < b.first; }));
  EXPECT_EQ(data.find("old"), nullptr);
}

// A refused file is as clean: key material where an id or the active id
// belongs, or a valid keyring but for its active id.
TEST_F(KeyringWipeTest, RefusedFilesLeaveNoKeyInFreedMemory) {
  auto line = [](size_t k) { return keyId(k) + " = \"" + std::string(g_b64[k].data(), kB64Len) + "\"\n"; };
  auto quoted = [](size_t k) { return "\"" + std::string(g_b64[k].data(), kB64Len) + "\""; };
  std::vector<std::string> texts = {
      "active = \"k1\"\n[keys]\n" + line(0) + quoted(1) + " = \"k2\"\n" + line(2),
      "active = " + quoted(3) + "\n[keys]\n" + line(0) + line(4) + line(5) + line(6),
      "active = \"k9\"\n[keys]\n" + line(0) + line(1) + line(2) + line(3) + line(4) + line(5),
  };
  const char* expect[] = {"keyring.toml:4: in [keys]: key id", "keyring.toml:1: the active key id is not in",
                          "keyring.toml:1: the active key id is not in"};
  for (size_t i = 0; i < texts.size(); ++i) {
    writeFile(texts[i]);
    std::string error;
    error.reserve(256);
    {
      Scan scan;
      EXPECT_EQ(LocalKeyring::load(path_, error), nullptr);
    }
    EXPECT_TRUE(noKeyWasFreed()) << i;
    EXPECT_NE(error.find(expect[i]), std::string::npos) << error;
  }
}

TEST_F(KeyringWipeTest, WriteLeavesNoKeyInFreedMemory) {
  KeyringData data;
  data.keys.reserve(kKeys);
  for (size_t k = 0; k < kKeys; ++k) data.keys.emplace_back(keyId(k), g_raw[k]);
  std::sort(data.keys.begin(), data.keys.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  data.active = "k3";
  std::string error;
  error.reserve(256);
  {
    Scan scan;
    ASSERT_TRUE(writeKeyring(path_, data, error)) << error;
  }
  EXPECT_TRUE(noKeyWasFreed());
  std::shared_ptr<const LocalKeyring> ring = LocalKeyring::load(path_, error);
  ASSERT_NE(ring, nullptr) << error;
  EXPECT_EQ(ring->keyIds().size(), kKeys);
}

// `portcullisctl keys gen`, run in process through the command registry, on
// a keyring that already holds the test keys: the new key's id sorts first,
// so every held key moves.
TEST_F(KeyringWipeTest, KeysGenLeavesNoKeyInFreedMemory) {
  writeAllKeys();
  const ctl::Command* keys = nullptr;
  for (const ctl::Command& c : ctl::commands()) {
    if (std::strcmp(c.name, "keys") == 0) keys = &c;
  }
  ASSERT_NE(keys, nullptr);
  const ctl::Args args = {"gen", "--keyring", path_, "--id", "a0", "--activate"};
  int rc = -1;
  {
    Scan scan;
    rc = keys->run(args);
  }
  EXPECT_TRUE(noKeyWasFreed());
  ASSERT_EQ(rc, 0);
  std::string error;
  std::shared_ptr<const LocalKeyring> ring = LocalKeyring::load(path_, error);
  ASSERT_NE(ring, nullptr) << error;
  EXPECT_EQ(ring->activeKeyId(), "a0");
  EXPECT_EQ(ring->keyIds().size(), kKeys + 1);
  uint8_t key[32];
  ASSERT_TRUE(ring->masterKey("k12", key));
  EXPECT_EQ(std::memcmp(key, g_raw[11].data(), 32), 0);
  OPENSSL_cleanse(key, sizeof(key));
}

}  // namespace
}  // namespace portcullis
