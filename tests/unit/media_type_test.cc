// Media type parsing (filters/media_type.h): type/subtype, parameters, and
// the charset a text upload declares.
#include "filters/media_type.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis {
namespace {

std::vector<std::string> params(std::string_view ct, bool& bad) {
  std::string_view type, subtype, rest;
  EXPECT_TRUE(splitMediaType(ct, type, subtype, rest)) << ct;
  MediaParams it(rest);
  MediaParam p;
  std::vector<std::string> out;
  while (it.next(p)) out.push_back(std::string(p.name) + "=" + std::string(p.value) + (p.quoted ? "/q" : "") +
                                   (p.escaped ? "/e" : ""));
  bad = it.bad();
  return out;
}

TEST(MediaType, SplitsTypeAndSubtype) {
  std::string_view type, subtype, rest;
  ASSERT_TRUE(splitMediaType("  Text/CSV ; charset=utf-8", type, subtype, rest));
  EXPECT_EQ(type, "Text");
  EXPECT_EQ(subtype, "CSV");
  EXPECT_EQ(rest, " ; charset=utf-8");
  for (const char* bad : {"", "text", "text/", "/csv", "te xt/csv", "text csv"}) {
    EXPECT_FALSE(splitMediaType(bad, type, subtype, rest)) << bad;
  }
}

TEST(MediaType, WalksParametersInOrder) {
  bool bad = true;
  EXPECT_EQ(params("text/csv", bad), std::vector<std::string>{});
  EXPECT_FALSE(bad);
  EXPECT_EQ(params("text/csv ;a=1;\tb=\"x;y=z\" ; c=\"q\\\"t\"  ", bad),
            (std::vector<std::string>{"a=1", "b=x;y=z/q", "c=q\\\"t/q/e"}));
  EXPECT_FALSE(bad);
  EXPECT_EQ(params("text/csv;", bad), std::vector<std::string>{});
  EXPECT_FALSE(bad);
  EXPECT_EQ(params("text/csv; ;a=1;;\t; b=2 ;", bad), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_FALSE(bad);
  for (const char* ct : {"text/csv; a", "text/csv; a=", "text/csv; =1", "text/csv a=1", "text/csv; a=1 b=2",
                         "text/csv; a=\"1", "text/csv; a=\"1\\", "text/csv; a=\"x\x01\"", "text/csv; a = 1"}) {
    SCOPED_TRACE(ct);
    params(ct, bad);
    EXPECT_TRUE(bad);
  }
}

TEST(MediaType, TextCharset) {
  EXPECT_EQ(textCharset("text/csv"), TextCharset::kUtf8);
  EXPECT_EQ(textCharset("text/csv; charset=utf-8"), TextCharset::kUtf8);
  EXPECT_EQ(textCharset("text/csv; header=present; CharSet=\"UTF-8\""), TextCharset::kUtf8);
  EXPECT_EQ(textCharset("text/plain; charset=US-ASCII"), TextCharset::kUtf8);
  EXPECT_EQ(textCharset("text/csv; charset=iso-8859-1"), TextCharset::kOther);
  EXPECT_EQ(textCharset("text/csv; charset=utf8"), TextCharset::kOther);  // not a registered name
  EXPECT_EQ(textCharset("text/csv; charset=utf-8; charset=utf-8"), TextCharset::kOther);
  EXPECT_EQ(textCharset("text/csv; charset=\"utf\\-8\""), TextCharset::kOther);
  EXPECT_EQ(textCharset("text/csv; charset"), TextCharset::kBadSyntax);
  EXPECT_EQ(textCharset("text/csv; charset=utf-8;"), TextCharset::kUtf8);  // empty parameters are allowed
  EXPECT_EQ(textCharset("text/csv;; ;charset=latin1"), TextCharset::kOther);
  EXPECT_EQ(textCharset("csv"), TextCharset::kBadSyntax);
}

}  // namespace
}  // namespace portcullis
