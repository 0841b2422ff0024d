// CsvValidator: accepted and refused bodies, each checked whole, split at every
// byte boundary, in three pieces (short inputs) and byte by byte, with the
// same outcome and error offset every time.
#include "filters/csv_validator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace portcullis {
namespace {

using E = CsvValidator::Error;

CsvValidator::Result runPieces(const std::string& s, const std::vector<size_t>& cuts) {
  CsvValidator v;
  size_t prev = 0;
  for (size_t c : cuts) {
    v.feed(s.data() + prev, c - prev);
    prev = c;
  }
  v.feed(s.data() + prev, s.size() - prev);
  return v.finish();
}

void expectAllSplits(const std::string& s, E want, uint64_t want_off) {
  auto check = [&](const CsvValidator::Result& r, const std::string& how) {
    EXPECT_EQ(r.error, want) << "input " << testing::PrintToString(s) << " " << how << ": got "
                             << CsvValidator::errorName(r.error) << " want " << CsvValidator::errorName(want);
    if (want != E::kNone) {
      EXPECT_EQ(r.offset, want_off) << "input " << testing::PrintToString(s) << " " << how;
    }
  };
  check(runPieces(s, {}), "whole");
  for (size_t k = 0; k <= s.size(); ++k) check(runPieces(s, {k}), "split at " + std::to_string(k));
  if (s.size() <= 48) {
    for (size_t a = 0; a <= s.size(); ++a)
      for (size_t b = a; b <= s.size(); ++b) check(runPieces(s, {a, b}), "split 3");
  }
  std::vector<size_t> all;
  for (size_t k = 1; k < s.size(); ++k) all.push_back(k);
  check(runPieces(s, all), "byte by byte");
}

std::string B(const char* p, size_t n) { return std::string(p, n); }

TEST(CsvValidator, AcceptsWellFormedCsv) {
  const std::vector<std::string> ok = {
      "",
      "a,b,c\r\n1,2,3\r\n",
      "a,b,c\n1,2,3",
      "\"a\",\"b\"\r\n",
      "\"a\"\"b\",c\n",
      "\"multi\r\nline, with comma\",x\n",
      "a,,b\n",
      ",\n",
      "\"\",\"\"",
      "\xEF\xBB\xBF\"a\",b\n",
      "\xEF\xBB\xBF" "a,b\n",
      "\xEF\xBB\xBF",
      "\xEF\xBB\xBF\xEF\xBB\xBF" "a",  // a second BOM is just U+FEFF in a field
      "a\tb\n",
      "caf\xC3\xA9,\xE2\x82\xAC,\xF0\x9F\x98\x80\n",
      "\"\xF0\x9F\x98\x80\"",
      "a\rb\r",
      "\"a\"\r\n",
      "\"a\"",
      "\xEF\xBF\xBD,x",  // starts with EF but is U+FFFD, not a BOM
      "x\n\"q\"\n",
      "a,\"b\"",
      "\"\"\"\"",  // a field holding one quote
      "id,name,email,amount,comment\r\n1,Alice,alice@example.com,12.50,\"likes \"\"quotes\"\", commas\"\r\n"
      "2,Bob,bob@example.com,-3,\"line\nbreak\"\r\n",
      "0123456789abcdef0123456789abcdef,\"0123456789abcdef0123456789abcdef\"\n",
      "\xC2\x80\xC2\x9F",  // C1 controls are valid UTF-8 text
  };
  for (const std::string& s : ok) expectAllSplits(s, E::kNone, 0);
}

TEST(CsvValidator, RefusesMalformedCsvAtTheFirstBadByte) {
  struct Case {
    const char* name;
    std::string text;
    E error;
    uint64_t offset;
  };
  const std::vector<Case> cases = {
      {"quote_in_unquoted", "a\"b", E::kQuoteInUnquoted, 1},
      {"quote_after_space", "a, \"b\"", E::kQuoteInUnquoted, 3},
      {"quote_after_bom_char", "\xEF\xBB\xBF" "a\"", E::kQuoteInUnquoted, 4},
      {"quote_after_utf8", "\xC3\xA9\"x\"", E::kQuoteInUnquoted, 2},
      {"quote_in_long_unquoted", "0123456789abcdef0123456789\"", E::kQuoteInUnquoted, 26},
      {"char_after_quote", "\"a\"b", E::kBadCharAfterQuote, 3},
      {"space_after_quote", "\"a\" ,b", E::kBadCharAfterQuote, 3},
      {"unterminated", "\"a", E::kUnterminatedQuote, 2},
      {"unterminated_escaped", "\"a\"\"", E::kUnterminatedQuote, 4},
      {"unterminated_multiline", "x\n\"a,\r\nb", E::kUnterminatedQuote, 8},
      {"nul", B("a\0b", 3), E::kControlChar, 1},
      {"nul_quoted", B("\"a\0\"", 4), E::kControlChar, 2},
      {"del", "a\x7F", E::kControlChar, 1},
      {"esc", "a\x1B[31m", E::kControlChar, 1},
      {"vt", "a\vb", E::kControlChar, 1},
      {"ff_in_long_field", "0123456789abcdef0123\f", E::kControlChar, 20},
      {"overlong", "\xC0\x80", E::kBadUtf8, 0},
      {"lone_cont", "ab\x80", E::kBadUtf8, 2},
      {"ff", "\xFF", E::kBadUtf8, 0},
      {"surrogate", "\"\xED\xA0\x80\"", E::kBadUtf8, 2},
      {"too_big", "\xF4\x90\x80\x80", E::kBadUtf8, 1},
      {"truncated_at_end", "a\xE2\x82", E::kBadUtf8, 3},
      {"truncated_mid", "a\xE2\x82,b", E::kBadUtf8, 3},
      {"partial_bom_at_end", "\xEF\xBB", E::kBadUtf8, 2},
      {"partial_bom_then_ascii", "\xEF\xBBx", E::kBadUtf8, 2},
      {"latin1", "caf\xE9,x", E::kBadUtf8, 4},
      {"latin1_in_long_field", "0123456789abcdef0123456789caf\xE9", E::kBadUtf8, 30},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    expectAllSplits(c.text, c.error, c.offset);
  }
}

TEST(CsvValidator, LargeBodyAnyChunking) {
  std::string csv = "id,name,city,amount,note\r\n";
  for (int i = 0; i < 3000; ++i)
    csv += std::to_string(i) + ",\"Name " + std::to_string(i) + "\",M\xC3\xBCnchen," + std::to_string(i * 7) +
           ".25,\"said \"\"hi\"\", left\"\r\n";
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{16}, size_t{17}, size_t{1000}, csv.size()}) {
    CsvValidator v;
    for (size_t i = 0; i < csv.size(); i += chunk) v.feed(csv.data() + i, std::min(chunk, csv.size() - i));
    EXPECT_TRUE(v.finish().ok()) << chunk;
  }
  std::string bad = csv;
  const size_t pos = bad.size() / 2;
  bad.insert(pos, 1, '\0');
  for (size_t chunk : {size_t{1}, size_t{16}, size_t{777}, bad.size()}) {
    CsvValidator v;
    for (size_t i = 0; i < bad.size(); i += chunk) v.feed(bad.data() + i, std::min(chunk, bad.size() - i));
    const auto r = v.finish();
    EXPECT_EQ(r.error, E::kControlChar) << chunk;
    EXPECT_EQ(r.offset, pos) << chunk;
  }
}

TEST(CsvValidator, StickyAndReset) {
  CsvValidator v;
  EXPECT_FALSE(v.feed("a\"", 2).ok());
  EXPECT_EQ(v.feed("b", 1).offset, 1u);
  v.reset();
  EXPECT_TRUE(v.feed("\"x\"", 3).ok());
  EXPECT_TRUE(v.finish().ok());
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

TEST(CsvValidator, RandomMutationsAreSplitInvariant) {
  std::mt19937 rng(777);
  const std::vector<std::string> seeds = {"a,\"b\"\"c\",d\r\n\"x\r\ny\",\xC3\xA9\r\n", "\xEF\xBB\xBF\"q\",1\n",
                                          "0123456789abcdef0123456789,\"0123456789abcdef0123456789\"\n"};
  const std::string alphabet = std::string("\",\r\n\tab\x7F\x01\x80\xC3\xA9\xEF\xBB\xBF\xED\xF0\x9F", 18) + std::string(1, '\0');
  for (int it = 0; it < 20000; ++it) {
    const std::string s = mutate(seeds[rng() % seeds.size()], rng, alphabet);
    CsvValidator a;
    a.feed(s);
    const auto ra = a.finish();
    CsvValidator b;
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
