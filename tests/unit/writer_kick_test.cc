#include "proxy/writer_kick.h"

#include <gtest/gtest.h>

namespace portcullis {
namespace {

// A loop wakes a writer at most once per KickThrottle::kEveryMs of loop
// time, counted from the last wake by any loop.
TEST(KickThrottle, AtMostOncePerIntervalOfLoopTime) {
  KickThrottle k;
  EXPECT_TRUE(k.due(1000));  // never woken: due at once
  for (uint64_t t = 1000; t < 1000 + KickThrottle::kEveryMs; ++t) EXPECT_FALSE(k.due(t)) << t;
  EXPECT_TRUE(k.due(1000 + KickThrottle::kEveryMs));
  // Another loop whose clock is a little behind is not due either (signed
  // difference, not a huge unsigned one).
  EXPECT_FALSE(k.due(1000 + KickThrottle::kEveryMs - 1));
  EXPECT_FALSE(k.due(1000));
  EXPECT_TRUE(k.due(5000));
}

TEST(KickThrottle, LoopTimeZeroCountsAsAWake) {
  KickThrottle k;
  EXPECT_TRUE(k.due(0));  // a loop started at time 0
  EXPECT_FALSE(k.due(0));
  EXPECT_FALSE(k.due(KickThrottle::kEveryMs - 1));
  EXPECT_TRUE(k.due(KickThrottle::kEveryMs + 1));
}

// A stage wakes its writer only if it published since its last wake.
TEST(KickThrottle, StageWakesOnlyAfterPublishing) {
  KickThrottle k;
  bool unkicked = false;
  EXPECT_FALSE(k.dueFor(unkicked, 100));  // nothing published
  unkicked = true;
  EXPECT_TRUE(k.dueFor(unkicked, 100));
  EXPECT_FALSE(unkicked);
  unkicked = true;
  EXPECT_FALSE(k.dueFor(unkicked, 102));  // not due: stays unkicked
  EXPECT_TRUE(unkicked);
  EXPECT_TRUE(k.dueFor(unkicked, 105));
  EXPECT_FALSE(unkicked);
}

}  // namespace
}  // namespace portcullis
