// RBAC patterns: compilation errors, matching, {account} binding, wildcards,
// tenant isolation and traversal-shaped paths.
#include "filters/rbac.h"

#include <gtest/gtest.h>

namespace portcullis {
namespace {

std::shared_ptr<const RbacPolicy> spec_policy() {
  std::string error;
  auto p = RbacPolicy::build(
      {
          {"reader", {"GET /v1/*", "HEAD /v1/*"}},
          {"uploader", {"POST /v1/accounts/{account}/uploads", "GET /v1/accounts/{account}/uploads/*"}},
          {"root", {"GET /"}},
          {"dir", {"GET /v2/list/"}},
          {"empty", {}},
      },
      error);
  EXPECT_TRUE(p) << error;
  return p;
}

TEST(RbacTest, PatternErrors) {
  struct Case {
    const char* pattern;
    RbacPatternError want;
  };
  const Case cases[] = {
      {"GET /v1/*", RbacPatternError::kOk},
      {"GET /", RbacPatternError::kOk},
      {"GET /*", RbacPatternError::kOk},
      {"DELETE /v1/accounts/{account}", RbacPatternError::kOk},
      {"GET /v1/a-b.c_d~e!$&'()+,;=:@", RbacPatternError::kOk},
      {"GET /v1/", RbacPatternError::kOk},
      {"", RbacPatternError::kEmpty},
      {"get /v1/*", RbacPatternError::kBadMethod},
      {"G3T /v1/*", RbacPatternError::kBadMethod},
      {" /v1/*", RbacPatternError::kBadMethod},
      {"ABCDEFGHIJKLMNOPQRSTU /v1", RbacPatternError::kBadMethod},
      {"GET", RbacPatternError::kBadSeparator},
      {"GET  /v1/*", RbacPatternError::kBadSeparator},
      {"GET\t/v1/*", RbacPatternError::kBadSeparator},
      {"GET ", RbacPatternError::kPathNotAbsolute},
      {"GET v1/*", RbacPatternError::kPathNotAbsolute},
      {"GET *", RbacPatternError::kPathNotAbsolute},
      {"GET //v1", RbacPatternError::kEmptySegment},
      {"GET /v1//x", RbacPatternError::kEmptySegment},
      {"GET /v1/../admin", RbacPatternError::kDotSegment},
      {"GET /v1/./x", RbacPatternError::kDotSegment},
      {"GET /v1/..", RbacPatternError::kDotSegment},
      {"GET /v1/%2e%2e/x", RbacPatternError::kBadCharacter},
      {"GET /v1/a b", RbacPatternError::kBadCharacter},
      {"GET /v1/*/x", RbacPatternError::kWildcardNotLast},
      {"GET /v1/*/", RbacPatternError::kWildcardNotLast},
      {"GET /v1/x*", RbacPatternError::kWildcardNotLast},
      {"GET /v1/**", RbacPatternError::kWildcardNotLast},
      {"GET /v1/x?y", RbacPatternError::kBadCharacter},
      {"GET /v1/x#y", RbacPatternError::kBadCharacter},
      {"GET /v1/x\\y", RbacPatternError::kBadCharacter},
      {"GET /v1/{acount}", RbacPatternError::kBadPlaceholder},
      {"GET /v1/{account}x", RbacPatternError::kBadPlaceholder},
      {"GET /v1/x{account}", RbacPatternError::kBadPlaceholder},
      {"GET /v1/{account", RbacPatternError::kBadPlaceholder},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(RbacPolicy::checkPattern(c.pattern), c.want)
        << c.pattern << " got " << rbacPatternErrorName(RbacPolicy::checkPattern(c.pattern));
  }
  EXPECT_EQ(RbacPolicy::checkPattern("GET /" + std::string(2000, 'a')), RbacPatternError::kTooLong);
  for (int e = 0; e <= static_cast<int>(RbacPatternError::kBadPlaceholder); ++e) {
    EXPECT_STRNE(rbacPatternErrorName(static_cast<RbacPatternError>(e)), "unknown");
  }
}

TEST(RbacTest, BuildReportsEveryProblem) {
  std::string error;
  auto p = RbacPolicy::build({{"a", {"GET /ok", "GET /x/../y"}}, {"a", {}}, {"b", {"get /"}}}, error);
  EXPECT_FALSE(p);
  EXPECT_NE(error.find("role[0] \"a\": allow[1] \"GET /x/../y\": dot_segment"), std::string::npos) << error;
  EXPECT_NE(error.find("duplicate role name"), std::string::npos) << error;
  EXPECT_NE(error.find("bad_method"), std::string::npos) << error;
}

TEST(RbacTest, WildcardMatchesOneOrMoreTrailingSegments) {
  auto p = spec_policy();
  const std::vector<std::string> r = {"reader"};
  EXPECT_TRUE(p->allowedByName(r, "GET", "/v1/x", "A"));
  EXPECT_TRUE(p->allowedByName(r, "GET", "/v1/x/y/z", "A"));
  EXPECT_TRUE(p->allowedByName(r, "GET", "/v1/x/", "A"));
  EXPECT_TRUE(p->allowedByName(r, "HEAD", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GET", "/v1", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GET", "/v1/", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GET", "/v10/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GET", "/v2/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GET", "/", "A"));
  // Methods are exact and case-sensitive.
  EXPECT_FALSE(p->allowedByName(r, "POST", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "get", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "GETX", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName(r, "", "/v1/x", "A"));
}

TEST(RbacTest, ExactAndTrailingSlashPatterns) {
  auto p = spec_policy();
  EXPECT_TRUE(p->allowedByName({"root"}, "GET", "/", "A"));
  EXPECT_FALSE(p->allowedByName({"root"}, "GET", "/x", "A"));
  EXPECT_TRUE(p->allowedByName({"dir"}, "GET", "/v2/list/", "A"));
  EXPECT_FALSE(p->allowedByName({"dir"}, "GET", "/v2/list", "A"));
  EXPECT_FALSE(p->allowedByName({"dir"}, "GET", "/v2/list/x", "A"));
  EXPECT_TRUE(p->allowedByName({"uploader"}, "POST", "/v1/accounts/A/uploads", "A"));
  EXPECT_FALSE(p->allowedByName({"uploader"}, "POST", "/v1/accounts/A/uploads/", "A"));
  EXPECT_FALSE(p->allowedByName({"uploader"}, "POST", "/v1/accounts/A/uploads/x", "A"));
  EXPECT_FALSE(p->allowedByName({"uploader"}, "POST", "/v1/accounts/A/uploadsx", "A"));
  EXPECT_FALSE(p->allowedByName({"uploader"}, "POST", "/v1/accounts/A", "A"));
}

TEST(RbacTest, DefaultDeny) {
  auto p = spec_policy();
  EXPECT_FALSE(p->allowedByName({}, "GET", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName({"empty"}, "GET", "/v1/x", "A"));
  EXPECT_FALSE(p->allowedByName({"nosuchrole"}, "GET", "/v1/x", "A"));
  EXPECT_FALSE(p->allowed(std::vector<int32_t>{-1, 99}, "GET", "/v1/x", "A"));
  EXPECT_TRUE(p->allowedByName({"nosuchrole", "reader"}, "GET", "/v1/x", "A"));
  EXPECT_EQ(p->roleIndex("reader"), 0);
  EXPECT_EQ(p->roleIndex("nope"), -1);
  EXPECT_EQ(p->resolveRoles({"nope", "uploader", "reader"}), (std::vector<int32_t>{1, 0}));
}

TEST(RbacTest, TenantIsolation) {
  auto p = spec_policy();
  const std::vector<std::string> up = {"uploader"};
  EXPECT_TRUE(p->allowedByName(up, "POST", "/v1/accounts/tenantA/uploads", "tenantA"));
  EXPECT_TRUE(p->allowedByName(up, "GET", "/v1/accounts/tenantA/uploads/f1", "tenantA"));
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/tenantB/uploads", "tenantA"));
  EXPECT_FALSE(p->allowedByName(up, "GET", "/v1/accounts/tenantB/uploads/f1", "tenantA"));
  // Exact: no prefix, suffix or case folding.
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/tenantAB/uploads", "tenantA"));
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/tenant/uploads", "tenantA"));
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/TENANTA/uploads", "tenantA"));
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/tenant%41/uploads", "tenantA"));
  // An empty account never matches {account}, not even an empty segment.
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts//uploads", ""));
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/x/uploads", ""));
  // An account containing a '/' can never match a single segment.
  EXPECT_FALSE(p->allowedByName(up, "POST", "/v1/accounts/a/b/uploads", "a/b"));
}

TEST(RbacTest, TraversalShapedPathsAreDenied) {
  auto p = spec_policy();
  const std::vector<std::string> roles = {"reader", "uploader"};
  const char* paths[] = {
      "/v1/accounts/A/uploads/../../B/uploads/x",
      "/v1/accounts/A/uploads/..",
      "/v1/accounts/A/uploads/./x",
      "/v1/accounts/A/uploads/%2e%2e/x",
      "/v1/accounts/A/uploads/%2E%2E/x",
      "/v1/accounts/A/uploads/.%2e/x",
      "/v1/accounts/A/uploads/%2e./x",
      "/v1/accounts/A/uploads/%2e/x",
      "/v1/accounts/A/..;/B/uploads/x",
      "/v1/accounts/A/uploads/.;x/y",
      "/v1/accounts/A/%2e%2e%3b/B/uploads/x",
      "/v1/accounts/A/uploads/x%2f..%2f..%2fB",
      "/v1/accounts/A/uploads/x%2F..",
      "/v1/accounts/A/uploads/x%5c..",
      "/v1/accounts/A/uploads/x\\..\\B",
      "/v1/accounts/A/uploads/x%00",
      "/v1/accounts/A/uploads/x%",
      "/v1/accounts/A/uploads/x%2",
      "/v1/accounts/A/uploads/x%zz",
      "/v1//x",
      "//v1/x",
      "/v1/x//",
      "/v1/x?y=1",
      "/v1/x#frag",
      "/v1/x y",
      "/v1/x\ty",
      "/v1/\x80",
      "v1/x",
      "",
      "/v1/x/..",
  };
  for (const char* path : paths) {
    EXPECT_FALSE(RbacPolicy::isSafePath(path)) << path;
    EXPECT_FALSE(p->allowedByName(roles, "GET", path, "A")) << path;
    EXPECT_FALSE(p->allowedByName(roles, "POST", path, "A")) << path;
  }
  EXPECT_FALSE(p->allowedByName(roles, "GET", std::string("/v1/x\0y", 7), "A"));
  // Dots inside a name and ordinary escapes are fine.
  EXPECT_TRUE(RbacPolicy::isSafePath("/v1/a..b/.hidden/x.y/%20"));
  EXPECT_TRUE(RbacPolicy::isSafePath("/v1/x;v=1/...;y/.a;b"));
  EXPECT_TRUE(p->allowedByName(roles, "GET", "/v1/accounts/A/uploads/report%20v2.csv", "A"));
  EXPECT_TRUE(p->allowedByName(roles, "GET", "/v1/accounts/A/uploads/...", "A"));
}

TEST(RbacTest, FiftyRolesUseTheRightOnes) {
  std::vector<RbacRoleConfig> cfg;
  for (int i = 0; i < 50; ++i) {
    cfg.push_back({"role" + std::to_string(i),
                   {"GET /v1/r" + std::to_string(i) + "/*", "POST /v1/accounts/{account}/r" + std::to_string(i)}});
  }
  std::string error;
  auto p = RbacPolicy::build(cfg, error);
  ASSERT_TRUE(p) << error;
  std::vector<int32_t> ids = {p->roleIndex("role7"), p->roleIndex("role42")};
  EXPECT_TRUE(p->allowed(ids, "GET", "/v1/r7/x", "A"));
  EXPECT_TRUE(p->allowed(ids, "POST", "/v1/accounts/A/r42", "A"));
  EXPECT_FALSE(p->allowed(ids, "GET", "/v1/r8/x", "A"));
  EXPECT_FALSE(p->allowed(ids, "POST", "/v1/accounts/B/r42", "A"));
}

}  // namespace
}  // namespace portcullis
