#include <payhost/abi.h>
#include <payhost/compat.h>
#include <payhost/fingerprint.h>

#include <gtest/gtest.h>

#include <string>

namespace payhost {
namespace {

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

// --------------------------------------------------------------------------------------------
// Names and versions

struct NameCase {
  const char* name;
  bool valid;
};

TEST(Compat, IsValidName) {
  std::string longest(128, 'a');
  std::string tooLong(129, 'a');
  NameCase cases[] = {
      {"a", true},
      {"echo", true},
      {"payments.card", true},
      {"card-processor_v2", true},
      {"9lives", true},
      {"a.b-c_d.0", true},
      {longest.c_str(), true},
      {"", false},
      {tooLong.c_str(), false},
      {".hidden", false},
      {"-dash", false},
      {"_under", false},
      {"Card", false},
      {"card processor", false},
      {"card/processor", false},
      {"card:processor", false},
      {"caf\xc3\xa9", false},
      {"tab\there", false},
  };
  for (auto& c : cases) {
    EXPECT_EQ(isValidName(c.name), c.valid) << "name '" << c.name << "'";
  }
}

TEST(Compat, IsValidVersion) {
  NameCase cases[] = {
      {"1.0.0", true},
      {"0.0.1", true},
      {"10.20.30", true},
      {"1.4.0-rc1", true},
      {"1.4.0-rc.1", true},
      {"1.4.0-beta-2", true},
      {"", false},
      {"1", false},
      {"1.0", false},
      {"1.0.0.0", false},
      {"1..0", false},
      {".1.0", false},
      {"1.0.", false},
      {"v1.0.0", false},
      {"1.0.0-", false},
      {"1.0-rc1", false},
      {"-1.0.0", false},
      {"1.0.0 ", false},
      {"1.0.x", false},
      {"1.0.0-rc 1", false},
      {"1.0.0-rc\n1", false},
      {"1.0.0-\x01", false},
      {"1.0.0-r\xc3\xa9", false},
  };
  for (auto& c : cases) {
    EXPECT_EQ(isValidVersion(c.name), c.valid) << "version '" << c.name << "'";
  }
  EXPECT_TRUE(isValidVersion(("1.0.0-" + std::string(58, 'a')).c_str()));
  EXPECT_FALSE(isValidVersion(("1.0.0-" + std::string(59, 'a')).c_str()));
}

// --------------------------------------------------------------------------------------------
// describeIncompatibility on hand-made descriptors

void* createNothing(void*, payhost_error_v1*) {
  return nullptr;
}
void destroyNothing(void*) {}
uint64_t noLiveObjects() {
  return 0;
}

const payhost_service_v1 TWO_SERVICES[] = {
    {"payments.card", "payhost::schema::CardProcessor", 1},
    {"payments.fraud", "payhost::schema::FraudScreen", 2},
};

// A descriptor this SDK accepts; each test breaks one thing.
payhost_plugin_v1_descriptor validDescriptor() {
  return payhost_plugin_v1_descriptor{
      sizeof(payhost_plugin_v1_descriptor),
      PAYHOST_ABI_MAJOR,
      PAYHOST_ABI_MINOR,
      PAYHOST_BUILD_FINGERPRINT,
      "card-processor",
      "1.2.3",
      TWO_SERVICES,
      2,
      &createNothing,
      &destroyNothing,
      &noLiveObjects,
  };
}

// The message for `descriptor`; fails the test when it is accepted.
std::string problem(const payhost_plugin_v1_descriptor& descriptor) {
  KJ_IF_MAYBE (message, describeIncompatibility(descriptor)) {
    return toStd(*message);
  }
  ADD_FAILURE() << "descriptor accepted";
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Compat, SdkFingerprintIsThisBuilds) {
  EXPECT_EQ(toStd(sdkFingerprint()), PAYHOST_BUILD_FINGERPRINT);
  EXPECT_TRUE(contains(toStd(sdkFingerprint()), "capnp=")) << toStd(sdkFingerprint());
}

TEST(Compat, AcceptsAValidDescriptor) {
  auto descriptor = validDescriptor();
  auto result = describeIncompatibility(descriptor);
  KJ_IF_MAYBE (message, result) {
    ADD_FAILURE() << message->cStr();
  }
}

TEST(Compat, AcceptsALargerDescriptorFromANewerMinorLayout) {
  // A plugin from a later SDK with fields appended (but an ABI this host supports).
  struct Larger {
    payhost_plugin_v1_descriptor v1;
    uint64_t appended;
  } larger{validDescriptor(), 42};
  larger.v1.struct_size = sizeof(Larger);
  EXPECT_TRUE(describeIncompatibility(larger.v1) == nullptr);
}

TEST(Compat, RefusesATooSmallDescriptor) {
  auto descriptor = validDescriptor();
  descriptor.struct_size = 16;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "descriptor too small")) << message;
  EXPECT_TRUE(contains(message, "16 bytes")) << message;
  EXPECT_TRUE(contains(message, std::to_string(sizeof(payhost_plugin_v1_descriptor)))) << message;
}

TEST(Compat, RefusesAnotherAbiMajorNamingBothSides) {
  auto descriptor = validDescriptor();
  descriptor.abi_major = PAYHOST_ABI_MAJOR + 1;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "SDK ABI mismatch")) << message;
  EXPECT_TRUE(contains(
      message, std::to_string(PAYHOST_ABI_MAJOR + 1) + "." + std::to_string(PAYHOST_ABI_MINOR)))
      << message;
  EXPECT_TRUE(contains(message, "host supports " + std::to_string(PAYHOST_ABI_MAJOR) + ".0 to " +
                                    std::to_string(PAYHOST_ABI_MAJOR) + "." +
                                    std::to_string(PAYHOST_ABI_MINOR)))
      << message;
}

TEST(Compat, RefusesAnOlderAbiMajor) {
  auto descriptor = validDescriptor();
  descriptor.abi_major = PAYHOST_ABI_MAJOR - 1;
  EXPECT_TRUE(contains(problem(descriptor), "SDK ABI mismatch"));
}

TEST(Compat, RefusesANewerAbiMinor) {
  auto descriptor = validDescriptor();
  descriptor.abi_minor = PAYHOST_ABI_MINOR + 1;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "SDK ABI mismatch")) << message;
  EXPECT_TRUE(contains(
      message, std::to_string(PAYHOST_ABI_MAJOR) + "." + std::to_string(PAYHOST_ABI_MINOR + 1)))
      << message;
}

TEST(Compat, RefusesAnotherFingerprintNamingBoth) {
  auto descriptor = validDescriptor();
  descriptor.fingerprint = "compiler=clang-99 stdlib=libc++-abi1 capnp=2.0.0";
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "build fingerprint mismatch")) << message;
  EXPECT_TRUE(contains(message, "plugin 'compiler=clang-99 stdlib=libc++-abi1 capnp=2.0.0'"))
      << message;
  EXPECT_TRUE(contains(message, "host '" + toStd(sdkFingerprint()) + "'")) << message;
}

TEST(Compat, RefusesAMissingFingerprint) {
  auto descriptor = validDescriptor();
  descriptor.fingerprint = nullptr;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "build fingerprint mismatch")) << message;
  EXPECT_TRUE(contains(message, "<missing>")) << message;
}

TEST(Compat, RefusesAFingerprintThatIsOnlyAPrefix) {
  auto descriptor = validDescriptor();
  auto prefix = toStd(sdkFingerprint()).substr(0, sdkFingerprint().size() - 1);
  descriptor.fingerprint = prefix.c_str();
  EXPECT_TRUE(contains(problem(descriptor), "build fingerprint mismatch"));
}

TEST(Compat, RefusesInvalidPluginNames) {
  for (const char* name : {"", "Card", "card processor", "-card"}) {
    auto descriptor = validDescriptor();
    descriptor.name = name;
    EXPECT_TRUE(contains(problem(descriptor), "invalid plugin name")) << "name '" << name << "'";
  }
  auto descriptor = validDescriptor();
  descriptor.name = nullptr;
  EXPECT_TRUE(contains(problem(descriptor), "invalid plugin name"));
}

TEST(Compat, RefusesAnInvalidVersionNamingThePlugin) {
  auto descriptor = validDescriptor();
  descriptor.version = "1.2";
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "card-processor")) << message;
  EXPECT_TRUE(contains(message, "invalid version")) << message;

  descriptor.version = nullptr;
  EXPECT_TRUE(contains(problem(descriptor), "invalid version"));
}

TEST(Compat, RefusesZeroServices) {
  auto descriptor = validDescriptor();
  descriptor.service_count = 0;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "card-processor declares 0 services")) << message;
}

TEST(Compat, RefusesAServiceCountWithoutServices) {
  auto descriptor = validDescriptor();
  descriptor.services = nullptr;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "declares 2 services")) << message;
}

TEST(Compat, RefusesAbsurdlyManyServices) {
  auto descriptor = validDescriptor();
  descriptor.service_count = 100000;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "declares 100000 services")) << message;
}

TEST(Compat, RefusesAnInvalidServiceNameNamingItsIndex) {
  payhost_service_v1 services[] = {
      {"payments.card", "payhost::schema::CardProcessor", 1},
      {"Payments Fraud", "payhost::schema::FraudScreen", 2},
  };
  auto descriptor = validDescriptor();
  descriptor.services = services;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "invalid service name at index 1")) << message;
}

TEST(Compat, RefusesAServiceWithoutInterfaceName) {
  payhost_service_v1 services[] = {{"payments.card", nullptr, 1}};
  auto descriptor = validDescriptor();
  descriptor.services = services;
  descriptor.service_count = 1;
  auto message = problem(descriptor);
  EXPECT_TRUE(contains(message, "service payments.card has no interface name")) << message;
}

TEST(Compat, RefusesMissingDoorFunctions) {
  auto descriptor = validDescriptor();
  descriptor.create = nullptr;
  EXPECT_TRUE(contains(problem(descriptor), "lacks its create/destroy/live_objects"));

  descriptor = validDescriptor();
  descriptor.destroy = nullptr;
  EXPECT_TRUE(contains(problem(descriptor), "lacks its create/destroy/live_objects"));

  descriptor = validDescriptor();
  descriptor.live_objects = nullptr;
  EXPECT_TRUE(contains(problem(descriptor), "lacks its create/destroy/live_objects"));
}

}  // namespace
}  // namespace payhost
