// Routing (Snapshot::match: longest prefix wins) and what buildSnapshot()
// derives from a config: route order, metric labels and health entries.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "proxy/config.h"
#include "proxy/metrics.h"
#include "proxy/snapshot.h"

namespace portcullis {
namespace {

// A config with one upstream per name in `upstreams` (server 127.0.0.1:9000+i)
// and one route per prefix, all on the first upstream unless told otherwise.
std::shared_ptr<Config> makeConfig(const std::vector<std::string>& prefixes,
                                   const std::vector<std::string>& upstreams = {"app"}) {
  auto cfg = std::make_shared<Config>();
  cfg->path = "test.toml";
  for (size_t i = 0; i < upstreams.size(); ++i) {
    UpstreamConfig u;
    u.name = upstreams[i];
    u.servers.push_back(HostPort{"127.0.0.1", static_cast<uint16_t>(9000 + i)});
    cfg->upstreams.push_back(u);
  }
  for (const std::string& p : prefixes) {
    RouteConfig r;
    r.prefix = p;
    r.upstream = upstreams[0];
    r.upstream_index = 0;
    r.auth = false;
    cfg->routes.push_back(r);
  }
  return cfg;
}

struct Built {
  HealthTable health;
  RouteLabels labels;
  std::shared_ptr<const Snapshot> snap;
};

std::string matched(const Snapshot& s, std::string_view path) {
  const RouteConfig* r = s.match(path);
  return r == nullptr ? "<none>" : r->prefix;
}

TEST(RouterTest, LongestPrefixWinsWhateverTheConfigOrder) {
  std::vector<std::string> prefixes = {"/", "/api", "/api/", "/api/v1", "/api/v1/admin", "/static/"};
  std::sort(prefixes.begin(), prefixes.end());
  int orders = 0;
  do {
    HealthTable health;
    RouteLabels labels;
    auto snap = buildSnapshot(makeConfig(prefixes), {}, health, labels, 1);
    SCOPED_TRACE(::testing::PrintToString(prefixes));
    EXPECT_EQ(matched(*snap, "/"), "/");
    EXPECT_EQ(matched(*snap, "/index.html"), "/");
    EXPECT_EQ(matched(*snap, "/api"), "/api");
    EXPECT_EQ(matched(*snap, "/apix"), "/api");  // a prefix of bytes, not of path segments
    EXPECT_EQ(matched(*snap, "/api/"), "/api/");
    EXPECT_EQ(matched(*snap, "/api/v2"), "/api/");
    EXPECT_EQ(matched(*snap, "/api/v1"), "/api/v1");
    EXPECT_EQ(matched(*snap, "/api/v10"), "/api/v1");
    EXPECT_EQ(matched(*snap, "/api/v1/users"), "/api/v1");
    EXPECT_EQ(matched(*snap, "/api/v1/admin"), "/api/v1/admin");
    EXPECT_EQ(matched(*snap, "/api/v1/admin/keys?x=1"), "/api/v1/admin");
    EXPECT_EQ(matched(*snap, "/static"), "/");  // "/static/" is longer than the path
    EXPECT_EQ(matched(*snap, "/static/app.js"), "/static/");
    EXPECT_EQ(matched(*snap, "/API/v1"), "/");  // case-sensitive
    // The routing table is sorted longest first.
    for (size_t i = 1; i < snap->routes.size(); ++i) {
      EXPECT_GE(snap->routes[i - 1]->prefix.size(), snap->routes[i]->prefix.size());
    }
    ++orders;
    if (::testing::Test::HasFailure()) break;
  } while (std::next_permutation(prefixes.begin(), prefixes.end()));
  EXPECT_EQ(orders, 720);
}

TEST(RouterTest, NoMatchIsNull) {
  HealthTable health;
  RouteLabels labels;
  auto snap = buildSnapshot(makeConfig({"/v1/", "/admin"}), {}, health, labels, 1);
  EXPECT_EQ(snap->match("/"), nullptr);
  EXPECT_EQ(snap->match(""), nullptr);
  EXPECT_EQ(snap->match("/v1"), nullptr);  // "/v1/" does not match "/v1"
  EXPECT_EQ(snap->match("/v2/x"), nullptr);
  EXPECT_EQ(snap->match("/adm"), nullptr);
  EXPECT_EQ(snap->match("v1/"), nullptr);
  EXPECT_EQ(snap->match("//v1/"), nullptr);
  EXPECT_EQ(snap->match("/ADMIN"), nullptr);
  ASSERT_NE(snap->match("/v1/"), nullptr);
  EXPECT_EQ(snap->match("/v1/")->prefix, "/v1/");
  ASSERT_NE(snap->match("/admin/x"), nullptr);
  EXPECT_EQ(snap->match("/admin/x")->prefix, "/admin");

  auto empty = buildSnapshot(makeConfig({}), {}, health, labels, 2);
  EXPECT_EQ(empty->match("/"), nullptr);
}

TEST(RouterTest, MatchIgnoresNothingButTheBytes) {
  // The router sees the path as received (no decoding, no normalisation):
  // "/admin" is not reached through "/%61dmin" or "/./admin".
  HealthTable health;
  RouteLabels labels;
  auto snap = buildSnapshot(makeConfig({"/admin", "/"}), {}, health, labels, 1);
  EXPECT_EQ(matched(*snap, "/%61dmin"), "/");
  EXPECT_EQ(matched(*snap, "/./admin"), "/");
  EXPECT_EQ(matched(*snap, "/admin/../x"), "/admin");
}

TEST(RouterTest, RouteIndexPointsIntoTheConfig) {
  HealthTable health;
  RouteLabels labels;
  auto snap = buildSnapshot(makeConfig({"/", "/b", "/a/long"}), {}, health, labels, 7);
  EXPECT_EQ(snap->generation, 7u);
  ASSERT_EQ(snap->routes.size(), 3u);
  EXPECT_EQ(snap->routes[0]->prefix, "/a/long");
  EXPECT_EQ(snap->routes[1]->prefix, "/b");
  EXPECT_EQ(snap->routes[2]->prefix, "/");
  for (size_t i = 0; i < snap->config->routes.size(); ++i) {
    const RouteConfig* r = snap->match(snap->config->routes[i].prefix);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(snap->routeIndex(r), i);
    EXPECT_EQ(r, &snap->config->routes[i]);
  }
}

TEST(RouterTest, RouteLabelsAreStableAcrossSnapshots) {
  HealthTable health;
  RouteLabels labels;
  auto first = buildSnapshot(makeConfig({"/", "/api", "/static"}), {}, health, labels, 1);
  ASSERT_EQ(first->route_labels.size(), 3u);
  const size_t root = first->route_labels[0];
  const size_t api = first->route_labels[1];
  const size_t stat = first->route_labels[2];
  EXPECT_NE(root, 0u);  // 0 is "none": requests that matched no route
  EXPECT_NE(root, api);
  EXPECT_NE(api, stat);
  EXPECT_EQ(labels.name(0), "none");
  EXPECT_EQ(labels.name(root), "/");
  EXPECT_EQ(labels.name(api), "/api");
  EXPECT_EQ(labels.name(stat), "/static");

  // Reordered, one route dropped and one added: the survivors keep their ids,
  // the new one gets a fresh id, and the dropped one's id is not reused.
  auto second = buildSnapshot(makeConfig({"/new", "/api", "/"}), {}, health, labels, 2);
  ASSERT_EQ(second->route_labels.size(), 3u);
  EXPECT_EQ(second->route_labels[1], api);
  EXPECT_EQ(second->route_labels[2], root);
  const size_t fresh = second->route_labels[0];
  EXPECT_NE(fresh, root);
  EXPECT_NE(fresh, api);
  EXPECT_NE(fresh, stat);
  EXPECT_EQ(labels.name(fresh), "/new");
  EXPECT_EQ(labels.count(), 5u);

  // The label of a matched route is found through its config index.
  const RouteConfig* r = second->match("/api/x");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(second->route_labels[second->routeIndex(r)], api);

  // The first snapshot is unchanged and still usable.
  EXPECT_EQ(first->match("/static/x")->prefix, "/static");
  EXPECT_EQ(first->route_labels[2], stat);
}

TEST(RouterTest, HealthEntriesSurviveReloads) {
  HealthTable health;
  RouteLabels labels;
  auto cfg = makeConfig({"/"}, {"app", "auth"});
  cfg->upstreams[0].servers.push_back(HostPort{"::1", 9100});
  auto first = buildSnapshot(cfg, {}, health, labels, 1);
  ASSERT_EQ(first->health.size(), 2u);
  ASSERT_EQ(first->health[0].size(), 2u);
  ASSERT_EQ(first->health[1].size(), 1u);
  EXPECT_EQ(first->health[0][0]->key, "app/127.0.0.1:9000");
  EXPECT_EQ(first->health[0][1]->key, "app/[::1]:9100");
  EXPECT_EQ(first->health[1][0]->key, "auth/127.0.0.1:9001");
  first->health[0][1]->healthy.store(false);

  // Upstreams in another order: the same entries (and their state) are found.
  auto cfg2 = makeConfig({"/"}, {"auth", "app"});
  cfg2->upstreams[0].servers[0].port = 9001;
  cfg2->upstreams[1].servers[0].port = 9000;
  cfg2->upstreams[1].servers.push_back(HostPort{"::1", 9100});
  auto second = buildSnapshot(cfg2, {}, health, labels, 2);
  EXPECT_EQ(second->health[0][0], first->health[1][0]);
  EXPECT_EQ(second->health[1][0], first->health[0][0]);
  EXPECT_EQ(second->health[1][1], first->health[0][1]);
  EXPECT_FALSE(second->health[1][1]->healthy.load());
  EXPECT_EQ(health.list().size(), 3u);
}

}  // namespace
}  // namespace portcullis
