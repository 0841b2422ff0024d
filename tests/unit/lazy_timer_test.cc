#include "proxy/lazy_timer.h"

#include <gtest/gtest.h>
#include <uv.h>

#include <cstdint>
#include <vector>

namespace portcullis {
namespace {

// One LazyDeadline on a real libuv loop; the callback records when the
// timeout was really due (by the loop's clock) and may run an action.
struct Fixture {
  uv_loop_t loop;
  uv_timer_t timer;
  LazyDeadline d;
  uint64_t start = 0;
  std::vector<uint64_t> fired;  // uv_now() - start at each due timeout
  void (*then)(Fixture&) = nullptr;

  Fixture() {
    uv_loop_init(&loop);
    uv_timer_init(&loop, &timer);
    timer.data = this;
    uv_update_time(&loop);
    start = uv_now(&loop);
  }
  ~Fixture() {
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
  static void onTimer(uv_timer_t* t) {
    auto* f = static_cast<Fixture*>(t->data);
    if (!f->d.due(t, &Fixture::onTimer)) return;
    f->fired.push_back(uv_now(&f->loop) - f->start);
    if (f->then != nullptr) f->then(*f);
  }
  void arm(uint64_t ms) { d.arm(&timer, &Fixture::onTimer, ms); }
  void run() { uv_run(&loop, UV_RUN_DEFAULT); }  // returns once the timer is idle
};

TEST(LazyDeadline, FiresOnceAtItsDeadline) {
  Fixture f;
  f.arm(20);
  f.run();
  ASSERT_EQ(f.fired.size(), 1u);
  EXPECT_GE(f.fired[0], 20u) << "never early";
  EXPECT_EQ(f.d.due_ms, 0u);
  EXPECT_EQ(f.d.armed_ms, 0u);
}

TEST(LazyDeadline, MovedLaterFiresOnceAtTheLaterDeadlineWithoutRestarting) {
  Fixture f;
  f.arm(10);
  const uint64_t armed = f.d.armed_ms;
  f.arm(60);  // later: a store, the uv timer keeps its earlier expiry
  EXPECT_EQ(f.d.armed_ms, armed);
  f.run();
  ASSERT_EQ(f.fired.size(), 1u);
  EXPECT_GE(f.fired[0], 60u) << "fired at the first expiry instead of the moved deadline";
}

TEST(LazyDeadline, ClearedNeverFires) {
  Fixture f;
  f.arm(10);
  f.d.clear();
  f.run();  // the uv timer runs out once and does nothing
  EXPECT_TRUE(f.fired.empty());
  EXPECT_EQ(f.d.armed_ms, 0u);
  EXPECT_EQ(uv_is_active(reinterpret_cast<uv_handle_t*>(&f.timer)), 0);
}

TEST(LazyDeadline, MovedEarlierRestartsTheTimer) {
  Fixture f;
  f.arm(60000);
  f.arm(10);  // earlier than the running timer: restarted
  EXPECT_EQ(f.d.armed_ms, f.d.due_ms);
  f.run();
  ASSERT_EQ(f.fired.size(), 1u);
  EXPECT_GE(f.fired[0], 10u);
  EXPECT_LT(f.fired[0], 60000u) << "waited for the old, later expiry";
}

TEST(LazyDeadline, ClearedThenArmedAgainFiresForTheNewDeadlineOnly) {
  Fixture f;
  f.arm(10);
  f.d.clear();
  f.arm(40);  // as a keep-alive connection does between requests
  f.run();
  ASSERT_EQ(f.fired.size(), 1u);
  EXPECT_GE(f.fired[0], 40u);
}

TEST(LazyDeadline, ReArmedFromItsOwnCallback) {
  Fixture f;
  f.then = [](Fixture& x) {
    if (x.fired.size() < 3) x.arm(5);
  };
  f.arm(5);
  f.run();
  ASSERT_EQ(f.fired.size(), 3u);
  EXPECT_GE(f.fired[2], 15u);
}

TEST(LazyDeadline, StopStopsTheUvTimer) {
  Fixture f;
  f.arm(60000);
  f.d.stop(&f.timer);
  EXPECT_EQ(uv_is_active(reinterpret_cast<uv_handle_t*>(&f.timer)), 0);
  f.run();
  EXPECT_TRUE(f.fired.empty());
}

}  // namespace
}  // namespace portcullis
