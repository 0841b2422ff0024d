#include "proxy/cidr.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

namespace portcullis {
namespace {

TEST(CidrTest, ParsesAndMatchesIpv4AndIpv6) {
  Cidr net;
  ASSERT_TRUE(Cidr::parse("10.0.0.0/8", net));
  EXPECT_TRUE(net.contains("10.255.1.2"));
  EXPECT_FALSE(net.contains("11.0.0.1"));
  EXPECT_TRUE(net.contains("::ffff:10.1.2.3")) << "IPv4-mapped addresses match as IPv4";
  EXPECT_FALSE(net.contains("not-an-ip"));

  Cidr host;
  ASSERT_TRUE(Cidr::parse("192.0.2.7", host));
  EXPECT_TRUE(host.contains("192.0.2.7"));
  EXPECT_FALSE(host.contains("192.0.2.8"));

  Cidr v6;
  ASSERT_TRUE(Cidr::parse("2001:db8::/32", v6));
  EXPECT_TRUE(v6.contains("2001:db8:1::5"));
  EXPECT_FALSE(v6.contains("2001:db9::1"));
  EXPECT_FALSE(v6.contains("10.0.0.1"));

  Cidr odd;
  ASSERT_TRUE(Cidr::parse("172.16.0.0/12", odd));
  EXPECT_TRUE(odd.contains("172.31.255.255"));
  EXPECT_FALSE(odd.contains("172.32.0.0"));
}

TEST(CidrTest, RefusesMalformedNetworks) {
  Cidr c;
  for (const char* bad : {"", "10.0.0.0/", "10.0.0.0/33", "10.0.0.1/8", "::/129", "1.2.3", "10.0.0.0/8/8",
                          "10.0.0.0/-1", "10.0.0.0/a", "2001:db8::1/32"}) {
    EXPECT_FALSE(Cidr::parse(bad, c)) << bad;
  }
  EXPECT_TRUE(Cidr::parse("0.0.0.0/0", c));
  EXPECT_TRUE(c.contains("8.8.8.8"));
}

TEST(CidrTest, ParsedAddressesMatchAndPrintCanonically) {
  IpAddress a;
  ASSERT_TRUE(IpAddress::parse("::ffff:10.1.2.3", a));
  char buf[INET6_ADDRSTRLEN];
  EXPECT_EQ(a.format(buf), 8u);
  EXPECT_STREQ(buf, "10.1.2.3");
  Cidr ten;
  ASSERT_TRUE(Cidr::parse("10.0.0.0/8", ten));
  EXPECT_TRUE(ten.contains(a));
  EXPECT_FALSE(IpAddress::parse(" 10.1.2.3", a));
  EXPECT_FALSE(IpAddress::parse("", a));
  EXPECT_FALSE(IpAddress::parse("10.1.2.3:80", a));
  ASSERT_TRUE(IpAddress::parse("2001:DB8:0:0:0:0:0:1", a));
  EXPECT_EQ(a.format(buf), 11u);
  EXPECT_STREQ(buf, "2001:db8::1");
  EXPECT_FALSE(ten.contains(a));
}

}  // namespace
}  // namespace portcullis
