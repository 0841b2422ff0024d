// server.cpu_affinity and server.worker_priority: the worker threads of a
// real proxy process run where the config puts them (read back from
// /proc/<pid>/task), the other threads keep the process's placement, requests
// are served, a negative priority without CAP_SYS_NICE is a warning, and a
// CPU the process may not use stops the start with a precise message.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

struct ThreadInfo {
  std::string name;
  int nice = 0;
  std::string cpus;  // Cpus_allowed_list, e.g. "0-1"
};

std::string readText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every thread of `pid`, by thread id.
std::map<std::string, ThreadInfo> threadsOf(pid_t pid) {
  std::map<std::string, ThreadInfo> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string tid = e.path().filename();
    ThreadInfo t;
    t.name = readText(e.path() / "comm");
    if (!t.name.empty() && t.name.back() == '\n') t.name.pop_back();
    // stat: "tid (comm) state ..." - fields after the ')' start at field 3;
    // nice is field 19.
    const std::string stat = readText(e.path() / "stat");
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string f;
    for (int i = 3; i <= 19 && (fields >> f); ++i) {
      if (i == 19) t.nice = std::stoi(f);
    }
    std::istringstream status(readText(e.path() / "status"));
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("Cpus_allowed_list:", 0) == 0) {
        t.cpus = line.substr(line.find_first_not_of(" \t", sizeof("Cpus_allowed_list:") - 1));
      }
    }
    out[tid] = t;
  }
  return out;
}

std::vector<int> usableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

// Waits (bounded) until `n` worker threads exist at nice `nice` (a worker
// applies its placement before it takes its pc-worker-N name).
std::map<std::string, ThreadInfo> waitForWorkers(pid_t pid, size_t n, int nice) {
  std::map<std::string, ThreadInfo> threads;
  for (int i = 0; i < 100; ++i) {
    threads = threadsOf(pid);
    size_t ready = 0;
    for (const auto& [tid, t] : threads) {
      if (t.name.rfind("pc-worker-", 0) == 0 && t.nice == nice) ++ready;
    }
    if (ready == n) break;
    std::this_thread::sleep_for(Millis(50));
  }
  return threads;
}

TEST(WorkerPlacementE2E, WorkersRunOnTheListedCpusAtTheirPriority) {
  DemoBackend backend;
  const std::vector<int> cpus = usableCpus();
  ASSERT_FALSE(cpus.empty());
  // Three workers over a two-entry list (or one, on a one-CPU machine): worker
  // i gets list[i % size].
  std::vector<int> list = {cpus.back(), cpus.front()};
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.workers = 3;
  o.server_toml = "cpu_affinity = [" + std::to_string(list[0]) + ", " + std::to_string(list[1]) +
                  "]\nworker_priority = 3\n";
  Proxy proxy(o);
  const auto threads = waitForWorkers(proxy.process().pid(), 3, 3);
  const int own_nice = getpriority(PRIO_PROCESS, 0);
  std::map<std::string, std::string> worker_cpus;
  for (const auto& [tid, t] : threads) {
    if (t.name.rfind("pc-worker-", 0) == 0) {
      EXPECT_EQ(t.nice, 3) << t.name;
      worker_cpus[t.name] = t.cpus;
    } else {
      // The main and log threads keep the placement the process started with.
      EXPECT_EQ(t.nice, own_nice) << t.name;
      EXPECT_NE(t.cpus, "") << t.name;
    }
  }
  ASSERT_EQ(worker_cpus.size(), 3u);
  EXPECT_EQ(worker_cpus["pc-worker-0"], std::to_string(list[0]));
  EXPECT_EQ(worker_cpus["pc-worker-1"], std::to_string(list[1]));
  EXPECT_EQ(worker_cpus["pc-worker-2"], std::to_string(list[0]));
  // Pinned workers serve: enough connections that the kernel's SO_REUSEPORT
  // spread reaches more than one of them.
  for (int i = 0; i < 12; ++i) {
    Client c(proxy.httpPort());
    EXPECT_EQ(c.roundTrip(getRequest("/pinned/" + std::to_string(i))).status, 200);
  }
}

TEST(WorkerPlacementE2E, AutoPutsWorkerIOnTheIthUsableCpu) {
  DemoBackend backend;
  const std::vector<int> cpus = usableCpus();
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.workers = static_cast<unsigned>(cpus.size()) + 1;  // wraps around once
  o.server_toml = "cpu_affinity = \"auto\"\n";
  Proxy proxy(o);
  const auto threads = waitForWorkers(proxy.process().pid(), o.workers, getpriority(PRIO_PROCESS, 0));
  std::map<std::string, std::string> worker_cpus;
  for (const auto& [tid, t] : threads) {
    if (t.name.rfind("pc-worker-", 0) == 0) worker_cpus[t.name] = t.cpus;
  }
  ASSERT_EQ(worker_cpus.size(), o.workers);
  for (unsigned i = 0; i < o.workers; ++i) {
    EXPECT_EQ(worker_cpus["pc-worker-" + std::to_string(i)], std::to_string(cpus[i % cpus.size()])) << i;
  }
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/auto")).status, 200);
}

TEST(WorkerPlacementE2E, ANegativePriorityWithoutCapSysNiceIsAWarning) {
  // Without CAP_SYS_NICE: as root, dropped from the bounding set for the
  // proxy's exec; another user has none, unless RLIMIT_NICE allows it.
  std::vector<std::string> exec_prefix;
  if (geteuid() == 0) {
    exec_prefix = {"/usr/bin/setpriv", "--bounding-set=-sys_nice", "--"};
  } else {
    struct rlimit rl {};
    ASSERT_EQ(getrlimit(RLIMIT_NICE, &rl), 0);
    if (rl.rlim_cur >= 23) GTEST_SKIP() << "RLIMIT_NICE lets this user set nice -3";
  }
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.exec_prefix = exec_prefix;
  o.workers = 2;
  o.server_toml = "worker_priority = -3\n";
  Proxy proxy(o);
  for (const char* name : {"pc-worker-0", "pc-worker-1"}) {
    EXPECT_TRUE(proxy.process().waitForStderr(std::string("server.worker_priority = -3 not applied to ") + name +
                                                  ": Permission denied (a negative priority needs CAP_SYS_NICE)",
                                              Millis(5000)))
        << proxy.process().stderrText();
  }
  // The workers run on at the process's own priority and serve. A worker
  // warns before it takes its name (it is named once placed): wait for both.
  const int own_nice = getpriority(PRIO_PROCESS, 0);
  size_t workers = 0;
  for (int tries = 0; tries < 500 && workers < 2; ++tries) {
    if (tries > 0) std::this_thread::sleep_for(Millis(10));
    workers = 0;
    for (const auto& [tid, t] : threadsOf(proxy.process().pid())) {
      if (t.name.rfind("pc-worker-", 0) == 0) ++workers;
    }
  }
  for (const auto& [tid, t] : threadsOf(proxy.process().pid())) {
    if (t.name.rfind("pc-worker-", 0) == 0) {
      EXPECT_EQ(t.nice, own_nice) << t.name;
    }
  }
  EXPECT_EQ(workers, 2u);
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/unprivileged")).status, 200);
}

TEST(WorkerPlacementE2E, ACpuTheProcessMayNotUseStopsTheStart) {
  TempDir dir;
  const std::vector<int> cpus = usableCpus();
  int missing = 0;
  while (std::find(cpus.begin(), cpus.end(), missing) != cpus.end()) ++missing;
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  o.server_toml = "cpu_affinity = [" + std::to_string(missing) + "]\n";
  const std::string cfg = dir.file("p.toml");
  writeFileAtomic(cfg, renderConfig(o, dir.path()));
  ChildProcess p({PORTCULLIS_BIN, "-c", cfg});
  int ws = 0;
  ASSERT_TRUE(p.waitExit(Millis(10000), &ws));
  EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) != 0);
  EXPECT_NE(p.stderrText().find("server.cpu_affinity: CPU " + std::to_string(missing) +
                                " is not one this process may use"),
            std::string::npos)
      << p.stderrText();
}

}  // namespace
}  // namespace portcullis::e2e
