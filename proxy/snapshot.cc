#include "proxy/snapshot.h"

#include <algorithm>

#include "proxy/metrics.h"

namespace portcullis {

HealthTable::Entry* HealthTable::entryFor(const std::string& key) {
  for (auto& e : entries_)
    if (e->key == key) return e.get();
  entries_.push_back(std::make_unique<Entry>());
  entries_.back()->key = key;
  return entries_.back().get();
}

std::vector<std::pair<std::string, bool>> HealthTable::list() const {
  std::vector<std::pair<std::string, bool>> out;
  for (const auto& e : entries_) out.emplace_back(e->key, e->healthy.load(std::memory_order_relaxed));
  return out;
}

const RouteConfig* Snapshot::match(std::string_view path) const {
  for (const RouteConfig* r : routes) {
    if (path.size() >= r->prefix.size() && path.compare(0, r->prefix.size(), r->prefix) == 0) return r;
  }
  return nullptr;
}

std::shared_ptr<const Snapshot> buildSnapshot(const std::shared_ptr<const Config>& config, FilterFactoryList filters,
                                              HealthTable& health, RouteLabels& labels, uint64_t generation) {
  auto snap = std::make_shared<Snapshot>();
  snap->config = config;
  snap->generation = generation;
  snap->filters = std::move(filters);
  for (const std::string& n : config->https.trusted_proxies) {
    Cidr c;
    if (Cidr::parse(n, c)) snap->trusted_proxies.push_back(c);  // validated by the loader
  }
  if (config->https.hsts_max_age_s > 0) {
    snap->hsts = "max-age=" + std::to_string(config->https.hsts_max_age_s) + "; includeSubDomains";
  }
  for (const RouteConfig& r : config->routes) {
    snap->routes.push_back(&r);
    snap->route_labels.push_back(labels.idFor(r.prefix));
  }
  std::stable_sort(snap->routes.begin(), snap->routes.end(),
                   [](const RouteConfig* a, const RouteConfig* b) { return a->prefix.size() > b->prefix.size(); });
  for (const UpstreamConfig& u : config->upstreams) {
    std::vector<HealthTable::Entry*> entries;
    for (const HostPort& s : u.servers) entries.push_back(health.entryFor(u.name + "/" + s.str()));
    snap->health.push_back(std::move(entries));
  }
  return snap;
}

}  // namespace portcullis
