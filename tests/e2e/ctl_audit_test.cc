// portcullisctl audit verify, driven as a real binary on logs written by
// AuditLog: exit 0 + summary when intact, 1 + the first bad line, 2 on usage
// and I/O errors.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "proxy/audit_log.h"
#include "proxy/keyring.h"

namespace portcullis {
namespace {

struct CtlAuditTest : ::testing::Test {
  std::string dir;
  void SetUp() override {
    std::string tmpl = "/tmp/pcctlauditXXXXXX";
    dir = mkdtemp(tmpl.data());
  }
  void TearDown() override { (void)system(("rm -rf '" + dir + "'").c_str()); }

  std::string read(const std::string& name) {
    std::ifstream in(dir + "/" + name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Runs portcullisctl with a shell-quoted argument string; output in out/err.
  int ctl(const std::string& args) {
    const std::string cmd = std::string(PORTCULLISCTL_BIN) + " " + args + " >'" + dir + "/out' 2>'" + dir + "/err'";
    const int st = system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
};

TEST_F(CtlAuditTest, VerifyIntactEditedAndErrors) {
  KeyringData data;
  data.active = "k1";
  MasterKey k{};
  k[0] = 42;
  data.keys.emplace_back("k1", k);
  std::string error;
  const std::string keyring = dir + "/keyring.toml";
  ASSERT_TRUE(writeKeyring(keyring, data, error)) << error;
  auto ring = LocalKeyring::load(keyring, error);
  ASSERT_TRUE(ring) << error;
  const std::string log_path = dir + "/audit.log";
  {
    AuditLog log;
    ASSERT_TRUE(log.start(log_path, ring, error)) << error;
    for (int i = 0; i < 5; ++i) log.record("auth.failure", AuditFields().str("reason", "bad_secret").take());
  }

  EXPECT_EQ(ctl("audit verify --keyring '" + keyring + "' '" + log_path + "'"), 0) << read("err");
  EXPECT_NE(read("out").find("intact, 6 records, last seq 6"), std::string::npos) << read("out");

  std::string text = read("audit.log");
  const size_t third = text.find("\"seq\":3,");
  text.replace(text.find("bad_secret", third), 3, "BAD");
  std::ofstream(log_path, std::ios::trunc) << text;
  EXPECT_EQ(ctl("audit verify --keyring '" + keyring + "' '" + log_path + "'"), 1);
  const std::string err = read("err");
  EXPECT_NE(err.find("line 3, seq 3: edited"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1);

  EXPECT_EQ(ctl("audit verify --keyring '" + keyring + "' '" + dir + "/missing.log'"), 2);
  EXPECT_EQ(ctl("audit verify '" + log_path + "'"), 2);
  EXPECT_EQ(ctl("audit verify --keyring '" + dir + "/nokeyring' '" + log_path + "'"), 2);
  EXPECT_EQ(ctl("audit frobnicate"), 2);
}

}  // namespace
}  // namespace portcullis
