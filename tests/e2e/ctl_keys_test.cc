// portcullisctl keys gen / decrypt, driven as a real binary in a temporary
// directory, against the published pcx1 test vectors (SPEC §4, §7).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/base64.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "proxy/keyring.h"
#include "tests/e2e/harness.h"
#include "tools/pcx1/pcx1.h"

namespace portcullis {
namespace {

namespace fs = std::filesystem;
using e2e::slurp;
using Bytes = std::vector<uint8_t>;

struct CtlRun {
  int rc = -1;
  std::string out, err;
};

class CtlKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ctl_keys_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    keyring_ = dir_ + "/keyring.toml";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs portcullisctl with stdin from `input` (bytes), capturing stdout/stderr.
  CtlRun ctl(const std::vector<std::string>& args, const std::string& input = "") {
    const std::string in = dir_ + "/stdin", out = dir_ + "/stdout", err = dir_ + "/stderr";
    std::ofstream(in, std::ios::binary | std::ios::trunc) << input;
    std::vector<std::string> argv_s = {PORTCULLISCTL_BIN};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    CtlRun r;
    r.rc = e2e::runWithFiles(argv_s, in, out, err);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  unsigned mode(const std::string& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0);
    return st.st_mode & 07777;
  }

  std::string dir_, keyring_;
};

std::map<std::string, std::map<std::string, std::string>> loadVectors() {
  std::ifstream in(std::string(TESTS_DATA_DIR) + "/pcx1/vectors.txt");
  std::map<std::string, std::map<std::string, std::string>> out;
  std::map<std::string, std::string> cur;
  std::string line;
  auto flush = [&]() {
    if (cur.count("name")) out[cur["name"]] = cur;
    cur.clear();
  };
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    if (line.empty()) {
      flush();
      continue;
    }
    const size_t eq = line.find(" =");
    if (eq == std::string::npos) continue;
    cur[line.substr(0, eq)] = eq + 3 <= line.size() ? line.substr(eq + 3) : "";
  }
  flush();
  return out;
}

std::string unhex(const std::string& s) {
  std::string b;
  for (size_t i = 0; i + 1 < s.size(); i += 2) b.push_back(char(std::stoi(s.substr(i, 2), nullptr, 16)));
  return b;
}

std::string b64(const std::string& raw) {
  uint8_t out[128];
  const size_t n = EVP_EncodeBlock(out, reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
  return std::string(reinterpret_cast<char*>(out), n);
}

TEST_F(CtlKeysTest, GenCreates0600AndRotates) {
  CtlRun r = ctl({"keys", "gen", "--keyring", keyring_});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("k1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(active)"), std::string::npos) << "the first key is active";
  EXPECT_EQ(mode(keyring_), 0600u);
  std::string error;
  auto ring = LocalKeyring::load(keyring_, error);
  ASSERT_NE(ring, nullptr) << error;
  EXPECT_EQ(ring->activeKeyId(), "k1");
  uint8_t k1[32];
  ASSERT_TRUE(ring->masterKey("k1", k1));
  // The key itself is never printed.
  EXPECT_EQ(r.out.find(b64(std::string(reinterpret_cast<char*>(k1), 32))), std::string::npos);

  r = ctl({"keys", "gen", "--keyring", keyring_});
  ASSERT_EQ(r.rc, 0) << r.err;
  ring = LocalKeyring::load(keyring_, error);
  ASSERT_NE(ring, nullptr) << error;
  EXPECT_EQ(ring->activeKeyId(), "k1") << "without --activate the active key stays";
  EXPECT_EQ(ring->keyIds(), (std::vector<std::string>{"k1", "k2"}));

  r = ctl({"keys", "gen", "--keyring", keyring_, "--id", "2026-q4", "--activate"});
  ASSERT_EQ(r.rc, 0) << r.err;
  ring = LocalKeyring::load(keyring_, error);
  ASSERT_NE(ring, nullptr) << error;
  EXPECT_EQ(ring->activeKeyId(), "2026-q4");
  uint8_t again[32];
  ASSERT_TRUE(ring->masterKey("k1", again));
  EXPECT_EQ(std::memcmp(k1, again, 32), 0) << "old keys are kept unchanged";
  EXPECT_EQ(mode(keyring_), 0600u);

  r = ctl({"keys", "gen", "--keyring", keyring_, "--id", "k1"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
  r = ctl({"keys", "gen", "--keyring", keyring_, "--id", "bad id"});
  EXPECT_NE(r.rc, 0);
  r = ctl({"keys", "gen"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--keyring"), std::string::npos) << r.err;
}

TEST_F(CtlKeysTest, GenRefusesGroupReadableKeyring) {
  ASSERT_EQ(ctl({"keys", "gen", "--keyring", keyring_}).rc, 0);
  const std::string before = slurp(keyring_);
  ::chmod(keyring_.c_str(), 0644);
  CtlRun r = ctl({"keys", "gen", "--keyring", keyring_});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("group or others"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(keyring_), before);
  r = ctl({"decrypt", "--keyring", keyring_}, "");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("group or others"), std::string::npos) << r.err;
}

// Concurrent runs serialise on <keyring>.lock: every run that reports
// success has its own key in the file, under its own id.
TEST_F(CtlKeysTest, ConcurrentGenRunsAllLandWithDistinctIds) {
  constexpr int kRuns = 16;
  std::string cmd = "cd " + dir_ + " && for i in $(seq " + std::to_string(kRuns) + "); do " + PORTCULLISCTL_BIN +
                    " keys gen --keyring " + keyring_ + " > out.$i 2>&1 & done; wait";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  int reported = 0;
  for (int i = 1; i <= kRuns; ++i) {
    const std::string out = slurp(dir_ + "/out." + std::to_string(i));
    EXPECT_NE(out.find(" added to "), std::string::npos) << out;
    reported += out.find(" added to ") != std::string::npos ? 1 : 0;
  }
  KeyringData data;
  std::string error;
  ASSERT_TRUE(readKeyring(keyring_, data, error)) << error;
  EXPECT_EQ(reported, kRuns);
  ASSERT_EQ(data.keys.size(), size_t(kRuns)) << "runs reported success but their keys were lost";
  for (int i = 1; i <= kRuns; ++i) EXPECT_NE(data.find("k" + std::to_string(i)), nullptr) << "k" << i;
  for (size_t i = 1; i < data.keys.size(); ++i) EXPECT_NE(data.keys[i].second, data.keys[0].second);
}

class CtlDecryptTest : public CtlKeysTest {
 protected:
  void SetUp() override {
    CtlKeysTest::SetUp();
    vectors_ = loadVectors();
    ASSERT_FALSE(vectors_.empty());
    // A keyring holding both vector keys, plus an unrelated active key.
    std::ofstream f(keyring_);
    f << "active = \"k1\"\n[keys]\n";
    for (const auto& [name, v] : vectors_) (void)name, keys_[v.at("key_id")] = unhex(v.at("master_key"));
    for (const auto& [id, key] : keys_) f << "\"" << id << "\" = \"" << b64(key) << "\"\n";
    f.close();
    ::chmod(keyring_.c_str(), 0600);
  }
  std::map<std::string, std::map<std::string, std::string>> vectors_;
  std::map<std::string, std::string> keys_;
};

TEST_F(CtlDecryptTest, DecryptsEveryVector) {
  for (const auto& [name, v] : vectors_) {
    CtlRun r = ctl({"decrypt", "--keyring", keyring_}, unhex(v.at("ciphertext")));
    EXPECT_EQ(r.rc, 0) << name << ": " << r.err;
    EXPECT_EQ(r.out, unhex(v.at("plaintext"))) << name;
    EXPECT_EQ(r.err, "") << name;
  }
}

TEST_F(CtlDecryptTest, LargeStreamRoundtrip) {
  std::string error;
  auto ring = LocalKeyring::load(keyring_, error);
  ASSERT_NE(ring, nullptr) << error;
  uint8_t master[32];
  ASSERT_TRUE(ring->masterKey("k1", master));
  Bytes plain(3 * 65536 + 123);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = uint8_t(i * 7 + (i >> 9));
  Bytes ct;
  ASSERT_EQ(pcx1::sealAll(master, "k1", 65536, plain, ct), pcx1::Error::kOk);
  CtlRun r = ctl({"decrypt", "--keyring", keyring_}, std::string(ct.begin(), ct.end()));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(r.out == std::string(plain.begin(), plain.end()));
}

TEST_F(CtlDecryptTest, RejectsTamperingWithoutReleasingTheBadSegment) {
  const auto& v = vectors_.at("three_segments");  // segment size 16: 16 + 16 + 8
  const std::string ct = unhex(v.at("ciphertext")), pt = unhex(v.at("plaintext"));
  const size_t hl = pcx1::headerLength(v.at("key_id").size());

  // Tampered second segment: the first one verified and may be written, the
  // second and third must not appear.
  std::string bad = ct;
  bad[hl + 32 + 5] ^= 1;
  CtlRun r = ctl({"decrypt", "--keyring", keyring_}, bad);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("segment 1"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  EXPECT_EQ(r.out, pt.substr(0, 16));

  // Tampered first segment: nothing is written.
  bad = ct;
  bad[hl + 1] ^= 0x40;
  r = ctl({"decrypt", "--keyring", keyring_}, bad);
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.out, "");

  struct Case {
    std::string input, expect;
  } cases[] = {
      {ct.substr(0, hl + 32), "truncated" /* reason mentions end of data */},
      {ct.substr(0, ct.size() - 1), "segment 2"},
      {ct + "x", "segment 2"},
      {ct.substr(0, 40), "header"},
      {"not a pcx1 stream at all, just some text that is long enough to parse", "magic"},
      {"", "empty input"},
  };
  for (const Case& c : cases) {
    r = ctl({"decrypt", "--keyring", keyring_}, c.input);
    EXPECT_EQ(r.rc, 1) << c.expect;
    EXPECT_FALSE(r.err.empty());
    if (c.expect != "truncated") {
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    }
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_LE(r.out.size(), 32u);
    EXPECT_EQ(r.out, pt.substr(0, r.out.size()));
  }

  // Wrong master key for the id: the data key does not unwrap.
  std::ofstream f(keyring_, std::ios::trunc);
  f << "active = \"k1\"\n[keys]\nk1 = \"" << b64(std::string(32, 'x')) << "\"\n";
  f.close();
  r = ctl({"decrypt", "--keyring", keyring_}, ct);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("does not unwrap"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  // Unknown key id.
  r = ctl({"decrypt", "--keyring", keyring_}, unhex(vectors_.at("seg64_rotated_key").at("ciphertext")));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("unknown key id"), std::string::npos) << r.err;
}

TEST_F(CtlDecryptTest, GeneratedKeyDecryptsWhatTheLibrarySeals) {
  const std::string ring2 = dir_ + "/ring2.toml";
  ASSERT_EQ(ctl({"keys", "gen", "--keyring", ring2}).rc, 0);
  std::string error;
  auto ring = LocalKeyring::load(ring2, error);
  ASSERT_NE(ring, nullptr) << error;
  uint8_t master[32];
  ASSERT_TRUE(ring->masterKey(ring->activeKeyId(), master));
  const std::string msg = "hello, pcx1";
  Bytes ct;
  ASSERT_EQ(pcx1::sealAll(master, ring->activeKeyId(), 4, Bytes(msg.begin(), msg.end()), ct), pcx1::Error::kOk);
  CtlRun r = ctl({"decrypt", "--keyring", ring2}, std::string(ct.begin(), ct.end()));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, msg);
}

}  // namespace
}  // namespace portcullis
