#include "proxy/ip_limiter.h"

#include <arpa/inet.h>
#include <xxhash.h>

#include <cstring>

namespace portcullis {

std::string clientAddressKey(std::string_view ip) {
  char text[INET6_ADDRSTRLEN];
  if (ip.size() >= sizeof(text)) return std::string(ip);
  std::memcpy(text, ip.data(), ip.size());
  text[ip.size()] = '\0';
  unsigned char bin[16];
  if (inet_pton(AF_INET, text, bin) == 1) return std::string("4") + std::string(reinterpret_cast<char*>(bin), 4);
  if (inet_pton(AF_INET6, text, bin) == 1) return std::string("6") + std::string(reinterpret_cast<char*>(bin), 8);
  return std::string(ip);
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
