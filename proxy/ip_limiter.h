// Open client connections per client address, across all workers, for
// server.max_connections_per_ip. Touched once when a connection is accepted
// and once when it closes, never per request; 64 independently locked shards
// keep workers from meeting on one lock.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace portcullis {

// The address a limit applies to: an IPv4 address, or the /64 network of an
// IPv6 address (one host commonly owns a whole /64). `ip` is textual.
std::string clientAddressKey(std::string_view ip);

class ConnectionsPerIp {
 public:
  // Counts one more connection for `key` unless that would exceed `limit`;
  // returns false (and counts nothing) when it would.
  bool tryAcquire(const std::string& key, uint32_t limit);
  // Releases one connection counted by a successful tryAcquire().
  void release(const std::string& key);
  // Connections counted for `key` (tests).
  uint32_t count(const std::string& key);

 private:
  static constexpr size_t kShards = 64;
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, uint32_t> counts;
  };
  Shard& shardFor(const std::string& key);
  Shard shards_[kShards];
};

}  // namespace portcullis
