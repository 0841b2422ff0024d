// X-Forwarded-For to client address behind trusted proxies (proxy/real_ip.h):
// the nginx realip rule with real_ip_recursive on.
#include "proxy/real_ip.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace portcullis {
namespace {

std::vector<Cidr> nets(std::initializer_list<const char*> texts) {
  std::vector<Cidr> out;
  for (const char* t : texts) {
    Cidr c;
    EXPECT_TRUE(Cidr::parse(t, c)) << t;
    out.push_back(c);
  }
  return out;
}

// Headers of a request: each XFF line in order, with other headers around
// and between them (which must not matter).
std::vector<Header> xff(std::initializer_list<std::string_view> lines) {
  std::vector<Header> h;
  h.reserve(1 + 2 * lines.size());
  h.push_back({"Host", "a.example", HeaderId::kHost});
  for (std::string_view l : lines) {
    h.push_back({"X-Forwarded-For", l, HeaderId::kXForwardedFor});
    h.push_back({"X-Other", "198.51.100.99", HeaderId::kOther});
  }
  return h;
}

// The chosen address, or "<peer>" when the function leaves it to the peer.
std::string pick(const std::vector<Header>& headers, const std::vector<Cidr>& trusted) {
  IpText out;
  if (!forwardedClientAddress(headers, trusted, out)) return "<peer>";
  EXPECT_EQ(out.view().size(), std::string(out.text).size()) << "length and NUL agree";
  return std::string(out.view());
}

const std::vector<Cidr> kLb = nets({"127.0.0.1/32"});
const std::vector<Cidr> kLbAndPrivate = nets({"127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"});

TEST(RealIp, SingleEntryIsTheClient) {
  EXPECT_EQ(pick(xff({"203.0.113.9"}), kLb), "203.0.113.9");
}

TEST(RealIp, WalksFromTheRightAndStopsAtTheFirstUntrustedEntry) {
  // The rightmost entry was appended by the proxy next to us; anything to the
  // left of the first untrusted entry is the client's own say, never believed.
  EXPECT_EQ(pick(xff({"192.0.2.1, 203.0.113.9"}), kLb), "203.0.113.9");
  EXPECT_EQ(pick(xff({"192.0.2.1, 203.0.113.9, 10.0.0.5"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({"192.0.2.1, 203.0.113.9, 10.0.0.5, 127.0.0.1, 10.9.9.9"}), kLbAndPrivate), "203.0.113.9");
  // Without 10/8 trusted, the nearest hop is the client.
  EXPECT_EQ(pick(xff({"203.0.113.9, 10.0.0.5"}), kLb), "10.0.0.5");
}

TEST(RealIp, SeveralHeaderLinesAreOneListInOrder) {
  EXPECT_EQ(pick(xff({"203.0.113.9", "10.0.0.5"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({"192.0.2.1, 203.0.113.9", "10.0.0.5, 10.0.0.6", "127.0.0.1"}), kLbAndPrivate), "203.0.113.9");
  // The last line is the nearest: its untrusted entry wins over earlier lines.
  EXPECT_EQ(pick(xff({"203.0.113.9", "198.51.100.4"}), kLbAndPrivate), "198.51.100.4");
  // An empty line in between is list syntax, nothing more.
  EXPECT_EQ(pick(xff({"203.0.113.9", "", "10.0.0.5"}), kLbAndPrivate), "203.0.113.9");
}

TEST(RealIp, SpacesTabsAndEmptyElementsAreListSyntax) {
  EXPECT_EQ(pick(xff({"  203.0.113.9  "}), kLb), "203.0.113.9");
  EXPECT_EQ(pick(xff({"203.0.113.9,10.0.0.5"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({"203.0.113.9 ,\t10.0.0.5\t"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({"203.0.113.9,, 10.0.0.5,"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({" , ,"}), kLb), "<peer>");
}

TEST(RealIp, Ipv6IsNormalisedAndIpv4MappedIsIpv4) {
  EXPECT_EQ(pick(xff({"2001:DB8:0:10:0:0:0:1"}), kLb), "2001:db8:0:10::1");
  EXPECT_EQ(pick(xff({"2001:db8:0:10::1, 2001:db8:ffff:1::2"}), kLbAndPrivate), "2001:db8:0:10::1");
  EXPECT_EQ(pick(xff({"::ffff:203.0.113.9"}), kLb), "203.0.113.9");
  // A mapped address of a trusted IPv4 network is trusted too.
  EXPECT_EQ(pick(xff({"203.0.113.9, ::ffff:10.1.2.3"}), kLbAndPrivate), "203.0.113.9");
  EXPECT_EQ(pick(xff({"::1"}), kLb), "::1");
}

TEST(RealIp, UnparsableEntryStopsAtTheLastTrustedHop) {
  // Rightmost entry garbage: nothing usable, the peer is the client.
  for (const char* bad : {"unknown", "203.0.113.9:8080", "[2001:db8::1]", "[2001:db8::1]:443", "fe80::1%eth0",
                          "_hidden", "203.0.113", "203.0.113.256", "0x7f.1", "203.0.113.9/32", "1.2.3.4 5.6.7.8",
                          "\"203.0.113.9\"", "999999999999999999999999999999999999999999999999999999"}) {
    EXPECT_EQ(pick(xff({bad}), kLb), "<peer>") << bad;
    EXPECT_EQ(pick(xff({std::string("203.0.113.9, ") + bad}), kLb), "<peer>") << "walked past " << bad;
  }
  // Garbage behind trusted hops: the last trusted hop walked is the client,
  // never the garbage and never anything left of it.
  EXPECT_EQ(pick(xff({"203.0.113.9, unknown, 10.0.0.5"}), kLbAndPrivate), "10.0.0.5");
  EXPECT_EQ(pick(xff({"203.0.113.9, unknown, 10.0.0.7, 10.0.0.5"}), kLbAndPrivate), "10.0.0.7");
  EXPECT_EQ(pick(xff({"203.0.113.9", "bogus", "10.0.0.5"}), kLbAndPrivate), "10.0.0.5");
}

TEST(RealIp, AllTrustedGivesTheLeftmost) {
  EXPECT_EQ(pick(xff({"10.0.0.1, 10.0.0.2, 127.0.0.1"}), kLbAndPrivate), "10.0.0.1");
  EXPECT_EQ(pick(xff({"10.0.0.1", "10.0.0.2"}), kLbAndPrivate), "10.0.0.1");
  EXPECT_EQ(pick(xff({"127.0.0.1"}), kLb), "127.0.0.1");
}

TEST(RealIp, NoOrEmptyHeaderLeavesThePeer) {
  EXPECT_EQ(pick(xff({}), kLb), "<peer>");
  EXPECT_EQ(pick(xff({""}), kLb), "<peer>");
  EXPECT_EQ(pick({}, kLb), "<peer>");
  // Lookalike headers are not X-Forwarded-For.
  std::vector<Header> other = {{"X-Real-IP", "203.0.113.9", HeaderId::kOther},
                               {"Forwarded", "for=203.0.113.9", HeaderId::kOther}};
  EXPECT_EQ(pick(other, kLb), "<peer>");
}

TEST(RealIp, ExtraSpellingsAreRefusedOrNormalised) {
  // Leading zeros would be octal to some parsers: not a plain address here.
  EXPECT_EQ(pick(xff({"010.0.0.1"}), kLb), "<peer>");
  EXPECT_EQ(pick(xff({"2001:0db8:0000::0001"}), kLb), "2001:db8::1");
}

}  // namespace
}  // namespace portcullis
