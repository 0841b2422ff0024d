// The proxy command line (SPEC §2): -t checks a config and names every
// problem with file, line and key; --version; a refused config never starts.
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>

#include <fstream>
#include <string>

#include "proxy/llhttp/simd.h"
#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

struct Result {
  int status = -1;
  std::string stderr_text;
};

Result runProxy(std::vector<std::string> args) {
  args.insert(args.begin(), PORTCULLIS_BIN);
  ChildProcess p(args);
  int ws = 0;
  EXPECT_TRUE(p.waitExit(Millis(10000), &ws));
  Result r;
  r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
  r.stderr_text = p.stderrText();
  return r;
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(CliE2E, CheckAcceptsAGoodConfig) {
  TempDir dir;
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  writeFile(dir.file("good.toml"), renderConfig(o, dir.path()));
  Result r = runProxy({"-t", "-c", dir.file("good.toml")});
  EXPECT_EQ(r.status, 0) << r.stderr_text;
}

TEST(CliE2E, CheckNamesEveryProblemWithFileLineAndKey) {
  TempDir dir;
  const std::string path = dir.file("bad.toml");
  writeFile(path,
            "[server]\n"
            "listen_http = \"127.0.0.1:0\"\n"
            "listen_htps = \"127.0.0.1:0\"\n"          // line 3: unknown key
            "[timeouts]\n"
            "upstream_connect_ms = \"soon\"\n"          // line 5: wrong type
            "[[upstream]]\n"
            "name = \"app\"\n"
            "servers = [\"127.0.0.1:9\"]\n"
            "[[route]]\n"
            "prefix = \"/\"\n"
            "upstream = \"nowhere\"\n"                  // line 11: unknown upstream
            "auth = false\n");
  Result r = runProxy({"-t", "-c", path});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.stderr_text.find(path + ":3: server.listen_htps"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find(path + ":5: timeouts.upstream_connect_ms"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find(path + ":11: route[0].upstream"), std::string::npos) << r.stderr_text;
}

TEST(CliE2E, ProtectionsNotBuiltYetAreRefusedNotIgnored) {
  TempDir dir;
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  // A route that asks for token checks must not start unprotected.
  std::string text = renderConfig(o, dir.path());
  const std::string needle = "auth = false";
  ASSERT_NE(text.find(needle), std::string::npos);
  text.replace(text.find(needle), needle.size(), "auth = true");
  writeFile(dir.file("auth.toml"), text);
  Result check = runProxy({"-t", "-c", dir.file("auth.toml")});
  EXPECT_EQ(check.status, 1);
  EXPECT_NE(check.stderr_text.find("route[0].auth"), std::string::npos) << check.stderr_text;
  Result run = runProxy({"-c", dir.file("auth.toml")});
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.stderr_text.find("route[0].auth"), std::string::npos) << run.stderr_text;
}

TEST(CliE2E, CheckLoadsTheFilesTheConfigNames) {
  TempDir dir;
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  o.routes[0].auth = true;
  o.extra_toml = "[auth]\ntoken_store = \"" + dir.file("missing-tokens.toml") + "\"\n";
  writeFile(dir.file("c.toml"), renderConfig(o, dir.path()));
  Result r = runProxy({"-t", "-c", dir.file("c.toml")});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.stderr_text.find("missing-tokens.toml"), std::string::npos) << r.stderr_text;

  ProxyOptions t = ProxyOptions::forBackend("127.0.0.1:9");
  t.tls_cert = dir.file("nope.crt");
  t.tls_key = dir.file("nope.key");
  writeFile(dir.file("t.toml"), renderConfig(t, dir.path()));
  Result rt = runProxy({"-t", "-c", dir.file("t.toml")});
  EXPECT_EQ(rt.status, 1);
  EXPECT_NE(rt.stderr_text.find("nope.key"), std::string::npos) << rt.stderr_text;
}

TEST(CliE2E, VersionAndUsage) {
  Result v = runProxy({"--version"});
  EXPECT_EQ(v.status, 0);
  // stdout names the parser build this CPU runs: the one this process (same
  // CPU, same library, same load-time choice) runs.
  std::string out;
  FILE* f = popen((std::string(PORTCULLIS_BIN) + " --version").c_str(), "r");
  ASSERT_NE(f, nullptr);
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(f), 0);
  EXPECT_EQ(out.rfind("portcullis ", 0), 0u) << out;
  const bool simd = portcullis_llhttp_simd_active() == 1;
  EXPECT_NE(out.find(simd ? "(SSE4.2 build of the parser)" : "(baseline build of the parser)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("llhttp 8."), std::string::npos) << out;
  EXPECT_NE(out.find("libuv 1."), std::string::npos) << out;
  EXPECT_NE(out.find("BoringSSL"), std::string::npos) << out;
  Result none = runProxy({});
  EXPECT_EQ(none.status, 1);
  EXPECT_NE(none.stderr_text.find("usage"), std::string::npos);
}

}  // namespace
}  // namespace portcullis::e2e
