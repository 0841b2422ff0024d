// Token store and keyring changes apply on the running config (SPEC §3
// auth.watch; SECURITY.md revocation): the config file on disk is not read
// for them, so a broken edit there cannot hold a revocation back, and an
// unapplied edit does not go live with a token change.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

std::string bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

void revoke(const std::string& store, const std::string& token) {
  const std::string cmd =
      std::string(PORTCULLISCTL_BIN) + " token revoke --store " + store + " " + token.substr(4, 12) + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Polls (up to `ms`) while GET `path` with `headers` gets `from`; returns the
// last status.
int statusAfter(Client& c, const std::string& path, const std::string& headers, int from, int ms) {
  int status = c.roundTrip(getRequest(path, headers)).status;
  for (int waited = 0; waited < ms && status == from; waited += 100) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = c.roundTrip(getRequest(path, headers)).status;
  }
  return status;
}

class AuthReloadE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.file("tokens.toml");
    acme_ = ctlIssue(store_, "acme", "reader");
    beta_ = ctlIssue(store_, "beta", "reader");
    ASSERT_FALSE(acme_.empty());
    ASSERT_FALSE(beta_.empty());
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    o.routes = {RouteSpec{"/v1/", "app", {}, 0, "", true}, RouteSpec{"/public/", "app", {}, 0, ""}};
    o.extra_toml = "[auth]\ntoken_store = \"" + store_ + "\"\n[[role]]\nname = \"reader\"\nallow = [\"GET /v1/*\"]\n";
    proxy_ = std::make_unique<Proxy>(o);
  }

  TempDir dir_;
  std::string store_, acme_, beta_;
  DemoBackend backend_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(AuthReloadE2E, RevocationAppliesWhileTheConfigFileOnDiskIsBroken) {
  Client c(proxy_->httpPort());
  ASSERT_EQ(c.roundTrip(getRequest("/v1/x", bearer(acme_))).status, 200);
  // An unapplied edit with an error: a full reload would be refused.
  proxy_->writeConfigText(slurp(proxy_->configPath()) + "typo_key = 1\n");
  revoke(store_, acme_);
  EXPECT_EQ(statusAfter(c, "/v1/x", bearer(acme_), 200, 2000), 401) << "revocation held back by the broken config file";
  EXPECT_EQ(c.roundTrip(getRequest("/v1/x", bearer(beta_))).status, 200) << "others are unaffected";
  // Still broken: the next revocation applies as well (nothing got stuck).
  revoke(store_, beta_);
  EXPECT_EQ(statusAfter(c, "/v1/x", bearer(beta_), 200, 2000), 401);
  EXPECT_FALSE(proxy_->reload()) << "the broken file itself is still refused";
}

TEST_F(AuthReloadE2E, ConfigEditOnDiskWaitsForSighupEvenWhenTokensChange) {
  Client c(proxy_->httpPort());
  std::string text = slurp(proxy_->configPath());
  const size_t at = text.find("\"/public/\"");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 10, "\"/moved/\"");
  proxy_->writeConfigText(text);
  const std::string gamma = ctlIssue(store_, "gamma", "reader");
  ASSERT_FALSE(gamma.empty());
  EXPECT_EQ(statusAfter(c, "/v1/x", bearer(gamma), 401, 2000), 200) << "a new token is picked up within about a second";
  EXPECT_EQ(c.roundTrip(getRequest("/public/x")).status, 200) << "the config edit went live without SIGHUP";
  EXPECT_NE(c.roundTrip(getRequest("/moved/x")).status, 200);
  ASSERT_TRUE(proxy_->reload());
  EXPECT_EQ(c.roundTrip(getRequest("/moved/x")).status, 200);
  EXPECT_NE(c.roundTrip(getRequest("/public/x")).status, 200);
}

// README/SPEC: a token seen over plaintext is revoked at once and refused by
// all workers within about a second, also with auth.watch = false: the
// proxy re-reads the store it just wrote itself.
TEST(AuthPlaintextNoWatchE2E, TokenSeenOverPlaintextIsRefusedWithoutTheWatch) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctlIssue(store, "acme", "reader");
  const std::string other = ctlIssue(store, "acme", "reader");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  // The loopback peer stands in for a TLS-terminating load balancer.
  o.https_toml = "plaintext = \"redirect\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\nwatch = false\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  const std::string via_tls = "X-Forwarded-Proto: https\r\n";
  ASSERT_EQ(c.roundTrip(getRequest("/x", via_tls + bearer(token))).status, 200);
  EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(token))).status, 308);
  EXPECT_EQ(statusAfter(c, "/x", via_tls + bearer(token), 200, 2000), 401) << "the exposed token is revoked in the store but still accepted";
  EXPECT_EQ(c.roundTrip(getRequest("/x", via_tls + bearer(other))).status, 200) << "only the exposed token";
}

}  // namespace
}  // namespace portcullis::e2e
