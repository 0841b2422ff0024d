// Keyring file loading, refusal rules and the atomic writer (SPEC §7).
#include "proxy/keyring.h"

#include <gtest/gtest.h>
#include <openssl/base64.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace portcullis {
namespace {

class KeyringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keyring_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/keyring.toml";
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  void writeFile(const std::string& text, mode_t mode = 0600) {
    std::ofstream(path_, std::ios::trunc) << text;
    ::chmod(path_.c_str(), mode);
  }
  static std::string b64(uint8_t start, size_t n = 32) {
    uint8_t raw[64];
    for (size_t i = 0; i < n; ++i) raw[i] = uint8_t(start + i);
    uint8_t out[128];
    const size_t len = EVP_EncodeBlock(out, raw, n);
    return std::string(reinterpret_cast<char*>(out), len);
  }
  std::string loadError() {
    std::string error;
    auto k = LocalKeyring::load(path_, error);
    EXPECT_EQ(k, nullptr);
    return error;
  }

  std::string dir_, path_;
};

TEST_F(KeyringTest, LoadsActiveAndOldKeys) {
  writeFile("active = \"k2\"\n[keys]\nk1 = \"" + b64(1) + "\"\nk2 = \"" + b64(2) + "\"\n");
  std::string error;
  auto k = LocalKeyring::load(path_, error);
  ASSERT_NE(k, nullptr) << error;
  EXPECT_EQ(k->activeKeyId(), "k2");
  uint8_t key[32];
  ASSERT_TRUE(k->masterKey("k1", key));
  EXPECT_EQ(key[0], 1);
  EXPECT_EQ(key[31], 32);
  ASSERT_TRUE(k->masterKey("k2", key));
  EXPECT_EQ(key[0], 2);
  EXPECT_FALSE(k->masterKey("k3", key));
  EXPECT_EQ(k->keyIds(), (std::vector<std::string>{"k1", "k2"}));
}

TEST_F(KeyringTest, RefusesGroupOrOtherAccess) {
  const std::string text = "active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n";
  for (mode_t mode : {0644, 0640, 0604, 0620, 0602, 0660}) {
    writeFile(text, mode);
    const std::string error = loadError();
    EXPECT_NE(error.find("group or others"), std::string::npos) << error;
    EXPECT_NE(error.find("chmod 600"), std::string::npos) << error;
  }
  writeFile(text, 0400);
  std::string error;
  EXPECT_NE(LocalKeyring::load(path_, error), nullptr) << error;
}

TEST_F(KeyringTest, RefusesBadContentsWithoutPrintingKeys) {
  const std::string good = b64(1);
  struct Case {
    std::string text, expect;
  } cases[] = {
      {"[keys]\nk1 = \"" + good + "\"\n", "no active key"},
      {"active = \"k9\"\n[keys]\nk1 = \"" + good + "\"\n", "not in [keys]"},
      {"active = 3\n[keys]\nk1 = \"" + good + "\"\n", "no active key"},
      {"active = \"k1\"\n", "missing [keys]"},
      {"active = \"k1\"\n[keys]\nk1 = \"not base64!!\"\n", "not base64 of exactly 32 bytes"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1, 31) + "\"\n", "not base64 of exactly 32 bytes"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1, 33) + "\"\n", "not base64 of exactly 32 bytes"},
      {"active = \"k1\"\n[keys]\nk1 = 5\n", "expected a base64 string"},
      {"active = \"k1\"\n[keys]\n\"bad id\" = \"" + good + "\"\n", "key id must be"},
      {"active = \"k1\"\nextra = 1\n[keys]\nk1 = \"" + good + "\"\n", "keyring.toml:2: unknown key"},
      {"active = \"k1\"\n[keys\n", "keyring.toml:2"},
  };
  for (const Case& c : cases) {
    writeFile(c.text);
    const std::string error = loadError();
    EXPECT_NE(error.find(c.expect), std::string::npos) << c.text << " -> " << error;
    EXPECT_EQ(error.find(good), std::string::npos) << "key material in the message: " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  std::remove(path_.c_str());
  EXPECT_NE(loadError().find("No such file"), std::string::npos);
}

// SECURITY.md: key material never reaches logs or stderr, also from a file
// with a slip of the hand: a key where an id or the active id belongs, twice,
// or an id too close to base64 to tell apart. Only the line and what is wrong.
TEST_F(KeyringTest, MisplacedKeyMaterialNeverAppearsInTheError) {
  const std::string key = b64(7);
  const std::string unpadded = key.substr(0, 43);  // no '=': would pass as an id
  struct Case {
    std::string text, expect;
  } cases[] = {
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n\"" + key + "\" = \"k2\"\n", "keyring.toml:4: in [keys]: key id"},
      {"active = \"" + key + "\"\n[keys]\nk1 = \"" + b64(1) + "\"\n", "keyring.toml:1: the active key id is not in"},
      {"\"" + key + "\" = \"k1\"\nactive = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n", "keyring.toml:1: unknown key"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n" + unpadded + " = \"k2\"\n", "keyring.toml:4: in [keys]: not base64"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n" + unpadded + " = 5\n", "keyring.toml:4: in [keys]: expected a base64"},
      // toml++'s own message quotes a redefined key.
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n\"" + key + "\" = \"k2\"\n\"" + key + "\" = \"k3\"\n",
       "keyring.toml:5: Error while parsing key-value pair: cannot redefine"},
      {"active = \"k1\"\n[\"" + key + "\"]\n[\"" + key + "\"]\n[keys]\nk1 = \"" + b64(1) + "\"\n",
       "keyring.toml:3: Error while parsing table header: cannot redefine"},
      // Not masked for toml++ (no '=', or not alone in its quotes): the message
      // names no redefined key at all.
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n" + unpadded + " = \"k2\"\n" + unpadded + " = \"k3\"\n",
       "keyring.toml:5: Error while parsing key-value pair: cannot redefine existing string"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n\" " + key + "\" = \"k2\"\n\" " + key + "\" = \"k3\"\n",
       "keyring.toml:5: Error while parsing key-value pair: cannot redefine existing string"},
      {"active = \"k1\"\n[\"" + unpadded + "\"]\n[\"" + unpadded + "\"]\n[keys]\nk1 = \"" + b64(1) + "\"\n",
       "keyring.toml:3: Error while parsing table header: cannot redefine existing table"},
      {"active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n[[\"" + unpadded + "\"]]\n[\"" + unpadded + "\"]\n",
       "keyring.toml:5: Error while parsing table header: cannot redefine existing array as table"},
      {"active = \"k1\"\nkeys = { k1 = \"" + b64(1) + "\" }\n[keys.\"" + unpadded + "\".a]\n",
       "keyring.toml:3: Error while parsing table header: cannot insert into existing inline table"},
  };
  for (const Case& c : cases) {
    writeFile(c.text);
    const std::string error = loadError();
    EXPECT_NE(error.find(c.expect), std::string::npos) << error;
    EXPECT_EQ(error.find(key.substr(0, 16)), std::string::npos) << "key material in the message: " << error;
  }
}

// readKeyring hands toml++ the text with each quoted key replaced by a
// placeholder and decodes the key from the file: every TOML string form of a
// key still loads, also one that is not masked (an escape sequence), and a
// key's text in a comment changes nothing.
TEST_F(KeyringTest, LoadsEveryStringFormOfAKey) {
  const std::string k2 = b64(2);
  ASSERT_EQ(k2[0], 'A');  // written as \u0041 for k5
  writeFile("# old: \"" + b64(9) + "\"\r\nactive = 'k2'\r\n[keys]\r\nk1 = '" + b64(1) + "'\r\n\t\"k2\" =\t\"\"\"" + k2 +
            "\"\"\"  # \"" + b64(9) + "\"\r\nk3 = '''" + b64(3) + "'''\r\nk4 = \"\"\"\n" + b64(4) + "\\\n  \"\"\"\r\n" +
            "k5 = \"\\u0041" + k2.substr(1) + "\"\r\n");
  std::string error;
  auto k = LocalKeyring::load(path_, error);
  ASSERT_NE(k, nullptr) << error;
  EXPECT_EQ(k->activeKeyId(), "k2");
  EXPECT_EQ(k->keyIds(), (std::vector<std::string>{"k1", "k2", "k3", "k4", "k5"}));
  uint8_t key[32];
  for (const auto& [id, first] : std::vector<std::pair<std::string, uint8_t>>{
           {"k1", 1}, {"k2", 2}, {"k3", 3}, {"k4", 4}, {"k5", 2}}) {
    ASSERT_TRUE(k->masterKey(id, key)) << id;
    EXPECT_EQ(key[0], first) << id;
    EXPECT_EQ(key[31], first + 31) << id;
  }
}

// With several faults in one table the error names the one that sorts first
// by the file's key text, as before keys were masked for toml++.
TEST_F(KeyringTest, ReportsTheSameFaultWhenAKeyIsWhereAnIdBelongs) {
  const std::string key = b64(7);  // "BwgJ...": sorts after "A" and before "b"
  writeFile("active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n\"" + key + "\" = \"k2\"\nb = 5\n");
  EXPECT_NE(loadError().find("keyring.toml:4: in [keys]: key id must be"), std::string::npos);
  writeFile("active = \"k1\"\n[keys]\nk1 = \"" + b64(1) + "\"\n\"" + key + "\" = \"k2\"\nA = 5\n");
  EXPECT_NE(loadError().find("keyring.toml:5: in [keys]: expected a base64 string"), std::string::npos);
}

TEST_F(KeyringTest, WriterIsAtomicAnd0600AndRoundtrips) {
  KeyringData d;
  MasterKey a{}, b{};
  a.fill(0x11);
  b.fill(0x22);
  d.keys = {{"k1", a}, {"k2", b}};
  d.active = "k1";
  std::string error;
  ASSERT_TRUE(writeKeyring(path_, d, error)) << error;
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto k = LocalKeyring::load(path_, error);
  ASSERT_NE(k, nullptr) << error;
  EXPECT_EQ(k->activeKeyId(), "k1");

  // Rotation: a new active key, the old one still decrypts.
  MasterKey c{};
  c.fill(0x33);
  d.keys.push_back({"k3", c});
  d.active = "k3";
  ASSERT_TRUE(writeKeyring(path_, d, error)) << error;
  k = LocalKeyring::load(path_, error);
  ASSERT_NE(k, nullptr) << error;
  EXPECT_EQ(k->activeKeyId(), "k3");
  uint8_t key[32];
  ASSERT_TRUE(k->masterKey("k1", key));
  EXPECT_EQ(key[5], 0x11);
  ASSERT_TRUE(k->masterKey("k2", key));
  EXPECT_EQ(key[5], 0x22);
  ASSERT_TRUE(k->masterKey("k3", key));
  EXPECT_EQ(key[5], 0x33);

  // No temporary file is left behind.
  std::string listing;
  FILE* p = popen(("ls -A " + dir_).c_str(), "r");
  char buf[256];
  while (fgets(buf, sizeof(buf), p)) listing += buf;
  pclose(p);
  EXPECT_EQ(listing, "keyring.toml\n");

  d.active = "nope";
  EXPECT_FALSE(writeKeyring(path_, d, error));
}

TEST(KeyringIds, Validity) {
  EXPECT_TRUE(validKeyringId("k1"));
  EXPECT_TRUE(validKeyringId("2026-12-04.a_b"));
  EXPECT_FALSE(validKeyringId(""));
  EXPECT_FALSE(validKeyringId("a b"));
  EXPECT_FALSE(validKeyringId("k\"1"));
  EXPECT_FALSE(validKeyringId(std::string(65, 'a')));
}

}  // namespace
}  // namespace portcullis
