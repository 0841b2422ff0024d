// Shared by the e2e tests of tokens seen over plaintext
// (https.revoke_tokens_seen_in_plaintext): the proxy set-up, the tokens, and
// the ways to expose a token and to make the store unwritable.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {

inline std::string bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

// Polls (up to `ms`) while GET `path` with `headers` gets `from`; returns the
// last status.
inline int statusAfter(Client& c, const std::string& path, const std::string& headers, int from, int ms) {
  int status = c.roundTrip(getRequest(path, headers)).status;
  for (int waited = 0; waited < ms && status == from; waited += 100) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = c.roundTrip(getRequest(path, headers)).status;
  }
  return status;
}

// auth.watch = false behind a TLS-terminating load balancer (the loopback
// peer stands in for it, X-Forwarded-Proto: https says so): two tokens of one
// account, a route that needs one, and a plaintext listener that redirects.
class PlaintextExposureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.file("tokens.toml");
    token_ = ctlIssue(store_, "acme", "reader");
    other_ = ctlIssue(store_, "acme", "reader");
    ASSERT_FALSE(token_.empty());
    ASSERT_FALSE(other_.empty());
    id_ = token_.substr(4, 12);
    lock_ = store_ + ".lock";
  }
  ProxyOptions options(const std::string& store = "", bool watch = false) const {
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
    o.https_toml = "plaintext = \"redirect\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    o.extra_toml = "[auth]\ntoken_store = \"" + (store.empty() ? store_ : store) + "\"\nwatch = " +
                   (watch ? "true" : "false") + "\n" + "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n";
    return o;
  }
  // The store cannot be written (the lock file is a directory: stops root too).
  void blockStore() {
    ::unlink(lock_.c_str());
    ASSERT_EQ(::mkdir(lock_.c_str(), 0700), 0);
  }
  // Sends the token over plaintext; waits until the write failed and every
  // worker refuses it.
  void expose(Proxy& proxy) {
    Client c(proxy.httpPort());
    ASSERT_EQ(c.roundTrip(getRequest("/x", via_tls + bearer(token_))).status, 200);
    ASSERT_EQ(c.roundTrip(getRequest("/x", bearer(token_))).status, 308);
    ASSERT_TRUE(proxy.process().waitForStderr("cannot revoke token", Millis(5000))) << proxy.process().stderrText();
    ASSERT_EQ(statusAfter(c, "/x", via_tls + bearer(token_), 200, 2000), 401);
  }
  int status(Proxy& proxy, const std::string& token) {
    Client c(proxy.httpPort());
    return c.roundTrip(getRequest("/x", via_tls + bearer(token))).status;
  }
  const std::string via_tls = "X-Forwarded-Proto: https\r\n";

  TempDir dir_;
  std::string store_, token_, other_, id_, lock_;
  DemoBackend backend_;
};

}  // namespace portcullis::e2e
