#include "proxy/ip_limiter.h"

#include "filters/rate_limiter.h"

#include <xxhash.h>

#include <cstring>

namespace portcullis {

std::string clientAddressKey(std::string_view ip) {
  // The same keying as the rate limiter (IPv4, IPv6 /64, IPv4-mapped as IPv4).
  return std::string(ipKey(ip).view());
}

ConnectionsPerIp::Shard& ConnectionsPerIp::shardFor(const std::string& key) {
  return shards_[XXH3_64bits(key.data(), key.size()) & (kShards - 1)];
}

bool ConnectionsPerIp::tryAcquire(const std::string& key, uint32_t limit) {
  Shard& s = shardFor(key);
  std::lock_guard<std::mutex> lock(s.mu);
  uint32_t& n = s.counts[key];
  if (n >= limit) {
    if (n == 0) s.counts.erase(key);
    return false;
  }
  ++n;
  return true;
}

void ConnectionsPerIp::release(const std::string& key) {
  Shard& s = shardFor(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.counts.find(key);
  if (it == s.counts.end()) return;
  if (--it->second == 0) s.counts.erase(it);
}

uint32_t ConnectionsPerIp::count(const std::string& key) {
  Shard& s = shardFor(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.counts.find(key);
  return it == s.counts.end() ? 0 : it->second;
}

}  // namespace portcullis
