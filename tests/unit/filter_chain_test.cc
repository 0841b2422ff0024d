// FilterChain with scripted fake filters: order of calls, kRespond, kPause and
// resume, skipped filters, wantsBody, completion and destruction.
#include "filters/filter_chain.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace portcullis {
namespace {

// Everything the fakes do, in order, as "name.phase" strings.
struct Journal {
  std::vector<std::string> calls;
  int alive = 0;
  std::string take() {
    std::string out;
    for (const std::string& c : calls) out += (out.empty() ? "" : " ") + c;
    calls.clear();
    return out;
  }
};

// What a fake filter returns from each phase, call by call; once a script is
// used up the filter continues.
struct Script {
  std::vector<FilterStatus> head;
  std::vector<FilterStatus> body;
  int respond_status = 403;
  std::string_view respond_code = "forbidden";
  std::string_view respond_filter;  // passed to ctx.respond() when set
  std::string_view add_header;      // added in onResponseHead when set
};

class FakeFilter : public Filter {
 public:
  FakeFilter(std::string name, Journal* journal, const Script* script)
      : name_(std::move(name)), journal_(journal), script_(script) {
    ++journal_->alive;
  }
  ~FakeFilter() override {
    journal_->calls.push_back(name_ + ".~");
    --journal_->alive;
  }

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    journal_->calls.push_back(name_ + ".head");
    return next(ctx, script_->head, head_calls_++);
  }
  FilterStatus onRequestBody(RequestContext& ctx, BodyChunk& chunk, bool end) override {
    journal_->calls.push_back(name_ + ".body(" + std::string(chunk.data) + (end ? ",end)" : ")"));
    return next(ctx, script_->body, body_calls_++);
  }
  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    journal_->calls.push_back(name_ + ".response");
    if (!script_->add_header.empty()) head.add(script_->add_header, name_);
  }
  void onComplete(const RequestContext& ctx) override {
    journal_->calls.push_back(name_ + ".complete(" + std::string(ctx.rejected_by) + ")");
  }

 private:
  FilterStatus next(RequestContext& ctx, const std::vector<FilterStatus>& seq, size_t i) {
    FilterStatus s = i < seq.size() ? seq[i] : FilterStatus::kContinue;
    if (s == FilterStatus::kRespond) ctx.respond(script_->respond_status, script_->respond_code, script_->respond_filter);
    return s;
  }

  std::string name_;
  std::string payload_ = std::string(100, 'p');  // on the heap: leaks unless the destructor runs
  Journal* journal_;
  const Script* script_;
  size_t head_calls_ = 0;
  size_t body_calls_ = 0;
};

class FakeFactory : public FilterFactory {
 public:
  FakeFactory(std::string name, Journal* journal, Script script = {}, bool wants_body = false, bool skip = false)
      : name_(std::move(name)), journal_(journal), script_(std::move(script)), wants_body_(wants_body), skip_(skip) {}
  std::string_view name() const override { return name_; }
  Filter* create(RequestContext& ctx) const override {
    ++created;
    if (skip_) return nullptr;
    return ctx.arena().make<FakeFilter>(name_, journal_, &script_);
  }
  bool wantsBody() const override { return wants_body_; }
  mutable int created = 0;

 private:
  std::string name_;
  Journal* journal_;
  Script script_;
  bool wants_body_;
  bool skip_;
};

class FilterChainTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_.bind(&arena_, &FilterChainTest::onResume, this); }

  std::shared_ptr<FakeFactory> add(const std::string& name, Script script = {}, bool wants_body = false,
                                   bool skip = false) {
    auto f = std::make_shared<FakeFactory>(name, &journal_, std::move(script), wants_body, skip);
    factories_.push_back(f);
    return f;
  }

  static void onResume(void* self) { ++static_cast<FilterChainTest*>(self)->resumes_; }

  Journal journal_;
  Arena arena_;
  RequestContext ctx_;
  RequestHead head_;
  ResponseHead resp_;
  FilterFactoryList factories_;
  int resumes_ = 0;
};

TEST_F(FilterChainTest, EveryPhaseRunsEveryFilterInOrder) {
  add("a");
  add("b", {}, /*wants_body=*/true);
  add("c");
  FilterChain chain;
  EXPECT_FALSE(chain.active());
  chain.start(factories_, ctx_);
  EXPECT_TRUE(chain.active());
  EXPECT_TRUE(chain.wantsBody());
  EXPECT_EQ(journal_.alive, 3);
  EXPECT_EQ(journal_.take(), "");  // create() calls no phase

  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  EXPECT_EQ(journal_.take(), "a.head b.head c.head");
  BodyChunk chunk{"xy"};
  EXPECT_EQ(chain.runRequestBody(ctx_, chunk, false), FilterStatus::kContinue);
  BodyChunk last{};
  EXPECT_EQ(chain.runRequestBody(ctx_, last, true), FilterStatus::kContinue);
  EXPECT_EQ(journal_.take(), "a.body(xy) b.body(xy) c.body(xy) a.body(,end) b.body(,end) c.body(,end)");
  chain.runResponseHead(ctx_, resp_);
  EXPECT_EQ(journal_.take(), "a.response b.response c.response");
  EXPECT_TRUE(ctx_.rejected_by.empty());

  chain.complete(ctx_);
  EXPECT_EQ(journal_.take(), "a.complete() b.complete() c.complete() a.~ b.~ c.~");
  EXPECT_EQ(journal_.alive, 0);
  EXPECT_FALSE(chain.active());
  chain.complete(ctx_);  // idempotent
  EXPECT_EQ(journal_.take(), "");
}

TEST_F(FilterChainTest, RespondStopsThePhaseAndNamesTheFactory) {
  add("a");
  Script refuse;
  refuse.head = {FilterStatus::kRespond};
  add("deny", refuse);
  add("c");
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kRespond);
  EXPECT_EQ(journal_.take(), "a.head deny.head");
  EXPECT_EQ(ctx_.rejected_by, "deny");
  EXPECT_EQ(chain.stoppedAt(), "deny");
  EXPECT_EQ(ctx_.local_reply.status, 403);
  EXPECT_EQ(ctx_.local_reply.code, "forbidden");
  // The local reply still goes through every filter's response phase, and
  // every filter completes, including the one never asked about the head.
  chain.runResponseHead(ctx_, resp_);
  EXPECT_EQ(journal_.take(), "a.response deny.response c.response");
  chain.complete(ctx_);
  EXPECT_EQ(journal_.take(), "a.complete(deny) deny.complete(deny) c.complete(deny) a.~ deny.~ c.~");
}

TEST_F(FilterChainTest, RespondKeepsTheNameTheFilterGave) {
  Script refuse;
  refuse.head = {FilterStatus::kRespond};
  refuse.respond_status = 401;
  refuse.respond_code = "unauthorized";
  refuse.respond_filter = "token_check";
  add("auth", refuse);
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kRespond);
  EXPECT_EQ(ctx_.rejected_by, "token_check");
  EXPECT_EQ(chain.stoppedAt(), "auth");
  EXPECT_EQ(ctx_.local_reply.status, 401);
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, RespondInTheBodyPhase) {
  add("a", {}, true);
  Script refuse;
  refuse.body = {FilterStatus::kContinue, FilterStatus::kRespond};
  refuse.respond_status = 413;
  refuse.respond_code = "payload_too_large";
  add("limit", refuse, true);
  add("c", {}, true);
  FilterChain chain;
  chain.start(factories_, ctx_);
  ASSERT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  journal_.take();
  BodyChunk one{"1"};
  EXPECT_EQ(chain.runRequestBody(ctx_, one, false), FilterStatus::kContinue);
  BodyChunk two{"2"};
  EXPECT_EQ(chain.runRequestBody(ctx_, two, false), FilterStatus::kRespond);
  EXPECT_EQ(journal_.take(), "a.body(1) limit.body(1) c.body(1) a.body(2) limit.body(2)");
  EXPECT_EQ(ctx_.rejected_by, "limit");
  EXPECT_EQ(ctx_.local_reply.status, 413);
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, PauseThenRerunContinuesAfterThePausingFilter) {
  add("a");
  Script wait;
  wait.head = {FilterStatus::kPause};
  add("slow", wait);
  add("c");
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kPause);
  EXPECT_EQ(journal_.take(), "a.head slow.head");
  EXPECT_EQ(chain.stoppedAt(), "slow");
  EXPECT_TRUE(ctx_.rejected_by.empty()) << "a pause is not a rejection";

  // The filter resumes through the context; the owner re-runs the phase.
  ctx_.resume();
  EXPECT_EQ(resumes_, 1);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  EXPECT_EQ(journal_.take(), "c.head");

  chain.runResponseHead(ctx_, resp_);
  chain.complete(ctx_);
  EXPECT_EQ(journal_.take(), "a.response slow.response c.response a.complete() slow.complete() c.complete() "
                             "a.~ slow.~ c.~");
}

TEST_F(FilterChainTest, PauseTwiceThenRespond) {
  Script wait;
  wait.head = {FilterStatus::kPause};
  add("p1", wait);
  add("p2", wait);
  Script refuse;
  refuse.head = {FilterStatus::kRespond};
  refuse.respond_status = 429;
  refuse.respond_code = "rate_limited";
  add("r", refuse);
  add("never");
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kPause);
  EXPECT_EQ(chain.stoppedAt(), "p1");
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kPause);
  EXPECT_EQ(chain.stoppedAt(), "p2");
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kRespond);
  EXPECT_EQ(journal_.take(), "p1.head p2.head r.head");
  EXPECT_EQ(ctx_.rejected_by, "r");
  EXPECT_EQ(ctx_.local_reply.status, 429);
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, PauseInTheBodyPhaseResumesThatSliceOnly) {
  add("a", {}, true);
  Script wait;
  wait.body = {FilterStatus::kPause};  // only the first slice
  add("slow", wait, true);
  add("c", {}, true);
  FilterChain chain;
  chain.start(factories_, ctx_);
  ASSERT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  journal_.take();
  BodyChunk one{"1"};
  EXPECT_EQ(chain.runRequestBody(ctx_, one, false), FilterStatus::kPause);
  EXPECT_EQ(chain.runRequestBody(ctx_, one, false), FilterStatus::kContinue);
  BodyChunk two{"2"};
  EXPECT_EQ(chain.runRequestBody(ctx_, two, true), FilterStatus::kContinue);
  EXPECT_EQ(journal_.take(), "a.body(1) slow.body(1) c.body(1) a.body(2,end) slow.body(2,end) c.body(2,end)");
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, APauseInTheHeadPhaseDoesNotSkipFiltersOfTheBodyPhase) {
  Script wait;
  wait.head = {FilterStatus::kPause};
  add("a", wait, true);
  add("b", {}, true);
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kPause);
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  BodyChunk one{"1"};
  EXPECT_EQ(chain.runRequestBody(ctx_, one, true), FilterStatus::kContinue);
  EXPECT_EQ(journal_.take(), "a.head b.head a.body(1,end) b.body(1,end)");
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, FactoriesReturningNullAreSkipped) {
  add("a");
  Script refuse;
  refuse.head = {FilterStatus::kRespond};
  auto skipped = add("skipped", refuse, /*wants_body=*/true, /*skip=*/true);
  add("c", refuse);
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(skipped->created, 1);
  EXPECT_EQ(journal_.alive, 2);
  EXPECT_FALSE(chain.wantsBody()) << "only filters that exist count";
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kRespond);
  EXPECT_EQ(journal_.take(), "a.head c.head");
  EXPECT_EQ(ctx_.rejected_by, "c") << "names stay aligned with the filters that exist";
  chain.runResponseHead(ctx_, resp_);
  chain.complete(ctx_);
  EXPECT_EQ(journal_.take(), "a.response c.response a.complete(c) c.complete(c) a.~ c.~");
}

TEST_F(FilterChainTest, WantsBody) {
  FilterChain chain;
  chain.start(factories_, ctx_);  // no filters at all
  EXPECT_TRUE(chain.active());
  EXPECT_FALSE(chain.wantsBody());
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  chain.complete(ctx_);

  add("a");
  add("b");
  chain.start(factories_, ctx_);
  EXPECT_FALSE(chain.wantsBody());
  chain.complete(ctx_);

  add("c", {}, true);
  chain.start(factories_, ctx_);
  EXPECT_TRUE(chain.wantsBody());
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, ResponseHeadEditsReachTheHead) {
  Script s;
  s.add_header = "X-Filter";
  add("one", s);
  add("two", s);
  FilterChain chain;
  chain.start(factories_, ctx_);
  chain.runResponseHead(ctx_, resp_);
  ASSERT_EQ(resp_.added.size(), 2u);
  EXPECT_EQ(resp_.added[0].name, "X-Filter");
  EXPECT_EQ(resp_.added[0].value, "one");
  EXPECT_EQ(resp_.added[1].value, "two");
  chain.complete(ctx_);
}

TEST_F(FilterChainTest, DestructorsRunWithoutComplete) {
  add("a");
  add("b");
  {
    FilterChain chain;
    chain.start(factories_, ctx_);
    EXPECT_EQ(journal_.alive, 2);
  }
  EXPECT_EQ(journal_.take(), "a.~ b.~") << "no onComplete when the chain is dropped";
  EXPECT_EQ(journal_.alive, 0);

  // start() on a chain that still holds filters destroys them first.
  FilterChain chain;
  chain.start(factories_, ctx_);
  chain.start(factories_, ctx_);
  EXPECT_EQ(journal_.take(), "a.~ b.~");
  EXPECT_EQ(journal_.alive, 2);
  chain.complete(ctx_);
  EXPECT_EQ(journal_.alive, 0);
}

TEST_F(FilterChainTest, OneChainServesManyRequests) {
  Script refuse_once;
  refuse_once.head = {FilterStatus::kRespond};
  add("a");
  add("b", refuse_once);
  FilterChain chain;
  for (int request = 0; request < 3; ++request) {
    ctx_.reset();
    arena_.reset();
    chain.start(factories_, ctx_);
    // Every request gets fresh filters, so the script starts over.
    EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kRespond);
    EXPECT_EQ(ctx_.rejected_by, "b");
    chain.complete(ctx_);
    EXPECT_EQ(journal_.take(), "a.head b.head a.complete(b) b.complete(b) a.~ b.~");
  }
}

TEST_F(FilterChainTest, MaxFilters) {
  for (size_t i = 0; i < FilterChain::kMaxFilters; ++i) add("f" + std::to_string(i));
  FilterChain chain;
  chain.start(factories_, ctx_);
  EXPECT_EQ(journal_.alive, static_cast<int>(FilterChain::kMaxFilters));
  EXPECT_EQ(chain.runRequestHead(ctx_, head_), FilterStatus::kContinue);
  EXPECT_EQ(journal_.calls.size(), FilterChain::kMaxFilters);
  chain.complete(ctx_);
  EXPECT_EQ(journal_.alive, 0);
}

TEST(RequestContextTest, RespondAndReset) {
  RequestContext ctx;
  ctx.resume();  // no owner bound: nothing happens
  ctx.respond(429, "rate_limited", "rate_limit", "over quota");
  EXPECT_EQ(ctx.local_reply.status, 429);
  EXPECT_EQ(ctx.local_reply.code, "rate_limited");
  EXPECT_EQ(ctx.rejected_by, "rate_limit");
  EXPECT_EQ(ctx.reason, "over quota");
  ctx.respond(403, "forbidden");  // keeps the earlier name and reason
  EXPECT_EQ(ctx.rejected_by, "rate_limit");
  EXPECT_EQ(ctx.reason, "over quota");
  ctx.local_reply.headers.push_back({"Retry-After", "1"});
  ctx.local_reply.close = true;
  ctx.token_id = "t";
  ctx.reset();
  EXPECT_EQ(ctx.local_reply.status, 0);
  EXPECT_TRUE(ctx.local_reply.code.empty());
  EXPECT_TRUE(ctx.local_reply.headers.empty());
  EXPECT_FALSE(ctx.local_reply.close);
  EXPECT_TRUE(ctx.rejected_by.empty());
  EXPECT_TRUE(ctx.reason.empty());
  EXPECT_TRUE(ctx.token_id.empty());
}

}  // namespace
}  // namespace portcullis
