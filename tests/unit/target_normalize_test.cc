// Request-target normalisation: accepted targets and their normalised path and
// query, and every refusal with its reason and offset. The function is one-shot
// (the whole target is in the request head), so there is no split to test.
#include "proxy/target_normalize.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis {
namespace {

using E = TargetError;

struct Out {
  NormalizedTarget r;
  std::string path;
};

Out norm(std::string_view t) {
  std::vector<char> buf(t.size() + 1);
  Out o;
  o.r = normalizeTarget(t, buf.data(), t.size());
  o.path.assign(buf.data(), o.r.path_len);
  return o;
}

TEST(TargetNormalize, AcceptsAndNormalises) {
  struct Case {
    std::string in, path;
  };
  const std::vector<Case> cases = {
      {"/", "/"},
      {"/a/b", "/a/b"},
      {"/v1/accounts/acme/uploads", "/v1/accounts/acme/uploads"},
      {"/a/./b", "/a/b"},
      {"/a/../b", "/b"},
      {"/a/b/..", "/a/"},
      {"/a/b/.", "/a/b/"},
      {"/./", "/"},
      {"/.", "/"},
      {"/a/..", "/"},
      {"/a/../", "/"},
      {"/a/b/../../c", "/c"},
      {"/a/%2e%2E/b", "/b"},
      {"/a/.%2E/", "/"},
      {"/a/%2e/b", "/a/b"},
      {"/%7euser", "/~user"},
      {"/%41%62%2D%5F%2e%7E", "/Ab-_.~"},
      {"/a%20b", "/a%20b"},
      {"/a%3a", "/a%3A"},
      {"/%c3%a9", "/%C3%A9"},
      {"/%ff", "/%FF"},
      {"/a%25b", "/a%25b"},
      {"/a//b", "/a//b"},
      {"/a//../b", "/a/b"},
      {"/.a/..b/.../a..", "/.a/..b/.../a.."},
      {"/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="},
      {"/a;v=1/...;x/.b;c/x.;y", "/a;v=1/...;x/.b;c/x.;y"},  // parameters on names, not on dot segments
      {"/v1/%61ccounts/./acme/x/../uploads", "/v1/accounts/acme/uploads"},
  };
  for (const Case& c : cases) {
    const Out o = norm(c.in);
    EXPECT_TRUE(o.r.ok()) << c.in << ": " << targetErrorName(o.r.error);
    EXPECT_EQ(o.path, c.path) << c.in;
    EXPECT_FALSE(o.r.has_query) << c.in;
    EXPECT_LE(o.path.size(), c.in.size());
    // Normalising is idempotent.
    const Out again = norm(o.path);
    EXPECT_TRUE(again.r.ok());
    EXPECT_EQ(again.path, o.path);
  }
}

TEST(TargetNormalize, QueryIsKeptApartAndUntouched) {
  Out o = norm("/a/../b?x=1&y=../..%2F%zz");
  ASSERT_TRUE(o.r.ok());
  EXPECT_EQ(o.path, "/b");
  EXPECT_TRUE(o.r.has_query);
  EXPECT_EQ(o.r.query, "x=1&y=../..%2F%zz");
  o = norm("/a?");
  ASSERT_TRUE(o.r.ok());
  EXPECT_TRUE(o.r.has_query);
  EXPECT_EQ(o.r.query, "");
  EXPECT_EQ(o.path, "/a");
  o = norm("/a?b?c/d");
  ASSERT_TRUE(o.r.ok());
  EXPECT_EQ(o.r.query, "b?c/d");
}

TEST(TargetNormalize, Asterisk) {
  const Out o = norm("*");
  EXPECT_TRUE(o.r.ok());
  EXPECT_TRUE(o.r.asterisk);
  EXPECT_EQ(o.r.path_len, 0u);
  EXPECT_EQ(norm("*/a").r.error, E::kNotOriginForm);
}

TEST(TargetNormalize, Refusals) {
  struct Case {
    std::string in;
    E error;
    size_t offset;
  };
  const std::vector<Case> cases = {
      {"", E::kEmpty, 0},
      {"http://example.com/a", E::kNotOriginForm, 0},
      {"example.com:443", E::kNotOriginForm, 0},
      {"a/b", E::kNotOriginForm, 0},
      {"/a%2fb", E::kEncodedSlash, 2},
      {"/a%2Fb", E::kEncodedSlash, 2},
      {"/..%2f..%2fetc/passwd", E::kEncodedSlash, 3},
      {"/a%5cb", E::kBackslash, 2},
      {"/a\\b", E::kBackslash, 2},
      {"/a/..\\..\\", E::kBackslash, 5},
      {"/a%00", E::kEncodedNul, 2},
      {"/a%00.png", E::kEncodedNul, 2},
      {"/a%zz", E::kBadPercent, 2},
      {"/a%2", E::kBadPercent, 2},
      {"/a%", E::kBadPercent, 2},
      {"/a%g0", E::kBadPercent, 2},
      {"/a%2?x", E::kBadPercent, 2},
      {"/..", E::kAboveRoot, 2},
      {"/../", E::kAboveRoot, 2},
      {"/a/../..", E::kAboveRoot, 7},
      {"/a/../../b", E::kAboveRoot, 7},
      {"/%2e%2e/etc/passwd", E::kAboveRoot, 6},
      {"/.%2e", E::kAboveRoot, 4},
      // Dot segments with path parameters (Tomcat/Jetty read "..;x" as "..").
      {"/a/..;/b", E::kDotSegmentParams, 5},
      {"/a/..;jsessionid=1/b", E::kDotSegmentParams, 17},
      {"/a/.;/b", E::kDotSegmentParams, 4},
      {"/a/%2e%2e;/b", E::kDotSegmentParams, 9},
      {"/a/..%3b/b", E::kDotSegmentParams, 7},
      {"/a/.%2E%3Bx", E::kDotSegmentParams, 10},
      {"/a/..;", E::kDotSegmentParams, 5},
      {"/a b", E::kBadChar, 2},
      {"/a#frag", E::kBadChar, 2},
      {"/a\x7F", E::kBadChar, 2},
      {std::string("/a\0b", 4), E::kBadChar, 2},
      {"/a\tb", E::kBadChar, 2},
      {"/caf\xC3\xA9", E::kBadChar, 4},
      {"/a\"b", E::kBadChar, 2},
      {"/a<b>", E::kBadChar, 2},
      {"/a{b}", E::kBadChar, 2},
      {"/a|b", E::kBadChar, 2},
      {"/a^b", E::kBadChar, 2},
      {"/a`b", E::kBadChar, 2},
      {"/a[b]", E::kBadChar, 2},
      {"/a?x y", E::kBadQueryChar, 4},
      {"/a?x\x01", E::kBadQueryChar, 4},
      {"/a?x\x7F", E::kBadQueryChar, 4},
      {"/a?x#f", E::kBadQueryChar, 4},
      {"/a?\r\n", E::kBadQueryChar, 3},
  };
  for (const Case& c : cases) {
    const Out o = norm(c.in);
    EXPECT_EQ(o.r.error, c.error) << testing::PrintToString(c.in) << ": got " << targetErrorName(o.r.error);
    EXPECT_EQ(o.r.error_offset, c.offset) << testing::PrintToString(c.in);
    EXPECT_EQ(o.r.path_len, 0u);
  }
}

TEST(TargetNormalize, BufferTooSmall) {
  char buf[4];
  const NormalizedTarget r = normalizeTarget("/abcdef?q", buf, sizeof buf);
  EXPECT_EQ(r.error, E::kBufferTooSmall);
  // The path part alone must fit; the query is not copied.
  char buf2[7];
  const NormalizedTarget r2 = normalizeTarget("/abcdef?a-long-query", buf2, sizeof buf2);
  EXPECT_TRUE(r2.ok());
  EXPECT_EQ(std::string(buf2, r2.path_len), "/abcdef");
}

}  // namespace
}  // namespace portcullis
