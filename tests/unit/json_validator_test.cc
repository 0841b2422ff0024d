// JsonValidator: JSONTestSuite-style accepted (y_) and refused (n_) texts, each
// checked whole, split at every byte boundary, in three pieces (short inputs)
// and byte by byte, with the same outcome and error offset every time.
#include "filters/json_validator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace portcullis {
namespace {

using E = JsonValidator::Error;

JsonValidator::Result runPieces(const std::string& s, const std::vector<size_t>& cuts, uint32_t depth) {
  JsonValidator v(depth);
  size_t prev = 0;
  for (size_t c : cuts) {
    v.feed(s.data() + prev, c - prev);
    prev = c;
  }
  v.feed(s.data() + prev, s.size() - prev);
  return v.finish();
}

// Runs every split of `s` and checks each gives `want`.
void expectAllSplits(const std::string& s, E want, uint64_t want_off, uint32_t depth = 64) {
  auto check = [&](const JsonValidator::Result& r, const std::string& how) {
    EXPECT_EQ(r.error, want) << "input " << testing::PrintToString(s) << " " << how << ": got "
                             << JsonValidator::errorName(r.error) << " want " << JsonValidator::errorName(want);
    if (want != E::kNone) {
      EXPECT_EQ(r.offset, want_off) << "input " << testing::PrintToString(s) << " " << how;
    }
  };
  check(runPieces(s, {}, depth), "whole");
  for (size_t k = 0; k <= s.size(); ++k) check(runPieces(s, {k}, depth), "split at " + std::to_string(k));
  if (s.size() <= 40) {
    for (size_t a = 0; a <= s.size(); ++a)
      for (size_t b = a; b <= s.size(); ++b) check(runPieces(s, {a, b}, depth), "split 3");
  }
  std::vector<size_t> all;
  for (size_t k = 1; k < s.size(); ++k) all.push_back(k);
  check(runPieces(s, all, depth), "byte by byte");
}

struct Case {
  const char* name;
  std::string text;
  E error;
  uint64_t offset;
};

std::string B(const char* p, size_t n) { return std::string(p, n); }

TEST(JsonValidator, AcceptsValidTexts) {
  const std::vector<std::string> ok = {
      "0", "-0", "1", "-1", "123", "1.5", "-1.5e-3", "1E5", "1e+2", "1E-2", "0.0", "0e0", "0E+0",
      "123456789012345678901234567890", "12345678901234567890.12345678901234567890e12345",
      "true", "false", "null", "\"\"", "\"x\"", "{}", "[]", " 1 ", "1\n", "\t\r\n [ ] \t\r\n",
      "[1, 2.5e+10, -0, 0.0, 1E5, -1.5e-3, true, false, null, \"x\", {}, [], {\"a\":{\"b\":[{}]}}]",
      "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}",
      "{\"\\u0000\":\"\\\\\\\"\\/\\b\\f\\n\\r\\t\"}",
      "[[[[]]]]", "[[],[[]],{}]", "{\"a\":{},\"b\":[]}", "{ \"a\" : 1 , \"b\" : [ 1 , 2 ] }",
      "\"\\uD83D\\uDE00\"", "\"\\ud83d\\ude00\"", "\"\\uDBFF\\uDFFF\"", "\"\\u0041\\u00e9\\uFFFF\\uD7FF\\uE000\"",
      "\"\xC2\xA9\"", "\"\xE2\x82\xAC\"", "\"\xF0\x9F\x98\x80\"", "\"\xF4\x8F\xBF\xBF\"", "\"\xED\x9F\xBF\"",
      "\"\xEE\x80\x80\"", "\"\xEF\xBF\xBF\"", "\"\x7F\"", "\"caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\"",
      "[\"a long string that crosses the sixteen byte vector width, twice over and more\", 1]",
      "{\"k\":\"v\\\"with quote and \\\\ backslash inside a long enough string to vectorise\"}",
      "[-1,0,1,-0.5,2e9,true,null,false]",
  };
  for (const std::string& s : ok) expectAllSplits(s, E::kNone, 0);
}

TEST(JsonValidator, RefusesInvalidTextsAtTheFirstBadByte) {
  const std::vector<Case> cases = {
      {"n_empty", "", E::kUnexpectedEnd, 0},
      {"n_ws_only", "   ", E::kUnexpectedEnd, 3},
      {"n_array_trailing_comma", "[1,]", E::kUnexpectedByte, 3},
      {"n_object_trailing_comma", "{\"a\":1,}", E::kUnexpectedByte, 7},
      {"n_leading_zero", "01", E::kBadNumber, 1},
      {"n_neg_leading_zero", "-01", E::kBadNumber, 2},
      {"n_minus_only", "-", E::kUnexpectedEnd, 1},
      {"n_minus_space", "- 1", E::kBadNumber, 1},
      {"n_dot_end", "1.", E::kUnexpectedEnd, 2},
      {"n_dot_e", "1.e5", E::kBadNumber, 2},
      {"n_plus", "+1", E::kUnexpectedByte, 0},
      {"n_leading_dot", ".5", E::kUnexpectedByte, 0},
      {"n_exp_end", "1e", E::kUnexpectedEnd, 2},
      {"n_exp_sign_end", "1e+", E::kUnexpectedEnd, 3},
      {"n_exp_sign_close", "[1e+]", E::kBadNumber, 4},
      {"n_dot_close", "[1.]", E::kBadNumber, 3},
      {"n_hex", "[0x1]", E::kUnexpectedByte, 2},
      {"n_nan", "[NaN]", E::kUnexpectedByte, 1},
      {"n_inf", "[Infinity]", E::kUnexpectedByte, 1},
      {"n_neg_inf", "[-Infinity]", E::kBadNumber, 2},
      {"n_number_trailing_garbage", "123abc", E::kTrailingData, 3},
      {"n_tru", "tru", E::kUnexpectedEnd, 3},
      {"n_trux", "trux", E::kBadLiteral, 3},
      {"n_nul1", "nul1", E::kBadLiteral, 3},
      {"n_True", "True", E::kUnexpectedByte, 0},
      {"n_true_trailing", "truex", E::kTrailingData, 4},
      {"n_fals_in_array", "[fals]", E::kBadLiteral, 5},
      {"n_unterminated_string", "\"abc", E::kUnexpectedEnd, 4},
      {"n_ctl_in_string", B("\"a\x01\"", 4), E::kControlInString, 2},
      {"n_nul_in_string", B("\"a\0\"", 4), E::kControlInString, 2},
      {"n_tab_in_string", "[\"a\tb\"]", E::kControlInString, 3},
      {"n_newline_in_long_string", "\"0123456789abcdefghij\nx\"", E::kControlInString, 21},
      {"n_bad_escape", "\"\\x\"", E::kBadEscape, 2},
      {"n_escape_apostrophe", "\"\\'\"", E::kBadEscape, 2},
      {"n_bad_hex", "\"\\u12G4\"", E::kBadEscape, 5},
      {"n_short_hex", "[\"\\u00\"]", E::kBadEscape, 6},
      {"n_lone_high", "\"\\uD800\"", E::kLoneSurrogate, 7},
      {"n_high_then_char", "\"\\uD800x\"", E::kLoneSurrogate, 7},
      {"n_high_then_other_escape", "\"\\uD800\\n\"", E::kLoneSurrogate, 8},
      {"n_high_then_bmp", "\"\\uD800\\u0041\"", E::kLoneSurrogate, 9},
      {"n_high_then_high", "\"\\uD800\\uD800\"", E::kLoneSurrogate, 10},
      {"n_lone_low", "\"\\uDC00\"", E::kLoneSurrogate, 4},
      {"n_lone_low_lower", "\"\\udfff\"", E::kLoneSurrogate, 4},
      {"n_high_at_end", "\"\\uD800", E::kUnexpectedEnd, 7},
      {"n_utf8_overlong_2", "\"\xC0\x80\"", E::kBadUtf8, 1},
      {"n_utf8_overlong_c1", "\"\xC1\xBF\"", E::kBadUtf8, 1},
      {"n_utf8_overlong_3", "\"\xE0\x9F\xBF\"", E::kBadUtf8, 2},
      {"n_utf8_overlong_4", "\"\xF0\x8F\xBF\xBF\"", E::kBadUtf8, 2},
      {"n_utf8_surrogate", "\"\xED\xA0\x80\"", E::kBadUtf8, 2},
      {"n_utf8_surrogate_low", "\"\xED\xBF\xBF\"", E::kBadUtf8, 2},
      {"n_utf8_too_big", "\"\xF4\x90\x80\x80\"", E::kBadUtf8, 2},
      {"n_utf8_f5", "\"\xF5\x80\x80\x80\"", E::kBadUtf8, 1},
      {"n_utf8_ff", "\"\xFF\"", E::kBadUtf8, 1},
      {"n_utf8_lone_cont", "\"\x80\"", E::kBadUtf8, 1},
      {"n_utf8_truncated", "\"\xE2\x82\"", E::kBadUtf8, 3},
      {"n_utf8_truncated_at_end", "\"\xE2\x82", E::kUnexpectedEnd, 3},
      {"n_utf8_in_long_string", "\"0123456789abcdefghijklmnop\xC3\x28\"", E::kBadUtf8, 28},
      {"n_utf8_outside_string", "[\xC3\xA9]", E::kUnexpectedByte, 1},
      {"n_bom", "\xEF\xBB\xBF[]", E::kUnexpectedByte, 0},
      {"n_two_values", "[] []", E::kTrailingData, 3},
      {"n_trailing_nul", B("[1]\0", 4), E::kTrailingData, 3},
      {"n_missing_colon", "{\"a\" 1}", E::kUnexpectedByte, 5},
      {"n_missing_comma", "{\"a\":1 \"b\":2}", E::kUnexpectedByte, 7},
      {"n_array_missing_comma", "[1 2]", E::kUnexpectedByte, 3},
      {"n_number_key", "{1:2}", E::kUnexpectedByte, 1},
      {"n_single_quote_key", "{'a':1}", E::kUnexpectedByte, 1},
      {"n_key_without_value", "{\"a\":1,\"b\"}", E::kUnexpectedByte, 10},
      {"n_colon_without_value", "{\"a\":}", E::kUnexpectedByte, 5},
      {"n_mismatch_array", "[1}", E::kUnexpectedByte, 2},
      {"n_mismatch_object", "{\"a\":1]", E::kUnexpectedByte, 6},
      {"n_close_only", "]", E::kUnexpectedByte, 0},
      {"n_open_only", "[", E::kUnexpectedEnd, 1},
      {"n_object_open", "{\"a\":", E::kUnexpectedEnd, 5},
      {"n_array_open", "[1,2,3", E::kUnexpectedEnd, 6},
      {"n_leading_comma", "[,1]", E::kUnexpectedByte, 1},
      {"n_double_comma", "[1,,2]", E::kUnexpectedByte, 3},
      {"n_nul_in_array", B("[\0]", 3), E::kUnexpectedByte, 1},
      {"n_single_quoted", "'a'", E::kUnexpectedByte, 0},
      {"n_comment", "[1]//c", E::kTrailingData, 3},
      {"n_vertical_tab_ws", "[\v1]", E::kUnexpectedByte, 1},
      {"n_nbsp_ws", "[\xC2\xA0" "1]", E::kUnexpectedByte, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    expectAllSplits(c.text, c.error, c.offset);
  }
}

TEST(JsonValidator, DepthLimit) {
  const std::string ok64 = std::string(64, '[') + std::string(64, ']');
  expectAllSplits(ok64, E::kNone, 0);
  const std::string deep65 = std::string(65, '[') + std::string(65, ']');
  expectAllSplits(deep65, E::kTooDeep, 64);
  std::string objs;
  for (int i = 0; i < 65; ++i) objs += "{\"a\":";
  expectAllSplits(objs, E::kTooDeep, 64 * 5);
  // Configurable.
  expectAllSplits("[[1]]", E::kNone, 0, 2);
  expectAllSplits("[[[1]]]", E::kTooDeep, 2, 2);
  expectAllSplits("{\"a\":[{}]}", E::kTooDeep, 6, 2);
  expectAllSplits("1", E::kNone, 0, 0);
  expectAllSplits("[]", E::kTooDeep, 0, 0);
  // The stack is a bitset: alternating kinds at every level must be tracked.
  std::string mixed, close;
  for (int i = 0; i < 300; ++i) {
    if (i % 3 == 0) {
      mixed += "{\"k\":";
      close = "}" + close;
    } else {
      mixed += "[";
      close = "]" + close;
    }
  }
  JsonValidator v(1024);
  EXPECT_TRUE(v.feed(mixed + "1" + close).ok());
  EXPECT_TRUE(v.finish().ok());
  JsonValidator w(1024);
  std::string bad = mixed + "1" + close;
  bad[bad.size() - 2] = bad[bad.size() - 2] == '}' ? ']' : '}';
  EXPECT_FALSE(w.feed(bad).ok());
  EXPECT_EQ(w.result().offset, bad.size() - 2);
}

TEST(JsonValidator, ErrorsAreStickyAndResetWorks) {
  JsonValidator v;
  auto r = v.feed("[1,]", 4);
  EXPECT_EQ(r.error, E::kUnexpectedByte);
  r = v.feed("[]", 2);
  EXPECT_EQ(r.error, E::kUnexpectedByte);
  EXPECT_EQ(r.offset, 3u);
  EXPECT_EQ(v.finish().offset, 3u);
  v.reset();
  EXPECT_TRUE(v.feed("{\"a\":[true]}", 12).ok());
  EXPECT_TRUE(v.finish().ok());
  EXPECT_TRUE(v.feed(nullptr, 0).ok());  // empty feed is harmless
}

TEST(JsonValidator, LargeDocumentWithErrorNearEnd) {
  std::string doc = "[";
  for (int i = 0; i < 2000; ++i) {
    if (i) doc += ",";
    doc += "{\"id\":" + std::to_string(i) + ",\"name\":\"user \xC3\xA9 " + std::to_string(i) +
           "\",\"tags\":[\"a\",\"b\"],\"score\":-1.25e3,\"ok\":true}";
  }
  doc += "]";
  JsonValidator v;
  EXPECT_TRUE(v.feed(doc).ok());
  EXPECT_TRUE(v.finish().ok());
  // Byte by byte and in odd chunks.
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{15}, size_t{16}, size_t{17}, size_t{4096}}) {
    JsonValidator w;
    for (size_t i = 0; i < doc.size(); i += chunk) w.feed(doc.data() + i, std::min(chunk, doc.size() - i));
    EXPECT_TRUE(w.finish().ok()) << chunk;
  }
  std::string bad = doc;
  const size_t pos = bad.size() - 20;
  bad[pos] = '\x01';
  for (size_t chunk : {size_t{1}, size_t{16}, size_t{1000}, bad.size()}) {
    JsonValidator w;
    for (size_t i = 0; i < bad.size(); i += chunk) w.feed(bad.data() + i, std::min(chunk, bad.size() - i));
    const auto r = w.finish();
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.offset, pos) << chunk;
  }
}


// Random mutations of valid texts, each fed whole and in random slices (seeded,
// so reproducible): the outcome and the offset must agree.
std::string mutate(std::string s, std::mt19937& rng, const std::string& alphabet) {
  const int muts = static_cast<int>(rng() % 4);
  for (int m = 0; m < muts; ++m) {
    const size_t pos = rng() % (s.size() + 1);
    const char c = alphabet[rng() % alphabet.size()];
    switch (rng() % 3) {
      case 0: s.insert(pos, 1, c); break;
      case 1: if (pos < s.size()) s.erase(pos, 1); break;
      default: if (pos < s.size()) s[pos] = c; break;
    }
  }
  return s;
}

TEST(JsonValidator, RandomMutationsAreSplitInvariant) {
  std::mt19937 rng(12345);
  const std::vector<std::string> seeds = {
      "{\"a\":[1,2.5e-3,true,null,\"x\\u00e9\\ud83d\\ude00\"],\"b\":{}}",
      "[\"\xC3\xA9\xF0\x9F\x98\x80\",-0,0.1,1E+2]", " {\"k\" : [ [ ] , { } ] } ", "-12.5e-7"};
  const std::string alphabet = "{}[]\",:0123456789.eE+-\\u tfnrlsa\r\n\x80\xC3\xA9\xED\xF0\x9F" "dDcC8";
  for (int it = 0; it < 20000; ++it) {
    const std::string s = mutate(seeds[rng() % seeds.size()], rng, alphabet);
    JsonValidator a;
    a.feed(s);
    const auto ra = a.finish();
    JsonValidator b;
    for (size_t i = 0; i < s.size();) {
      const size_t n = std::min<size_t>(s.size() - i, rng() % 9);
      b.feed(s.data() + i, n);
      i += n;
    }
    const auto rb = b.finish();
    ASSERT_EQ(ra.error, rb.error) << testing::PrintToString(s);
    ASSERT_EQ(ra.offset, rb.offset) << testing::PrintToString(s);
  }
}

}  // namespace
}  // namespace portcullis
