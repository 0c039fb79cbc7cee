#include "host/loader/generation.h"

#include <payhost/config.h>
#include <payhost/payments.capnp.h>

#include <capnp/capability.h>
#include <kj/refcount.h>
#include <kj/time.h>

#include <gtest/gtest.h>

#include <string>

#include "tests/host/loader/loader-test-support.h"

namespace payhost::host {
namespace {

using testsupport::anyMappingNamed;
using testsupport::fixturePath;
using testsupport::nextLoadId;

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

kj::Own<Generation> loadEcho(uint64_t id, kj::StringPtr configToml = "") {
  auto library =
      PluginLibrary::load(kj::StringPtr(fixturePath("fixture-echo.so").c_str()), nextLoadId());
  return kj::atomicRefcounted<Generation>(id, kj::mv(library),
                                          Config::parse(configToml, "<generation test>"));
}

TEST(Generation, CopiesTheDescriptorIntoHostMemory) {
  auto generation = loadEcho(3);
  auto& descriptor = generation->descriptor();
  EXPECT_NE(generation->name().begin(), descriptor.name);
  EXPECT_NE(generation->version().begin(), descriptor.version);
  ASSERT_EQ(generation->services().size(), 1u);
  EXPECT_NE(generation->services()[0].name.begin(), descriptor.services[0].name);

  // Close the library under the generation: what it copied must still be readable (a pointer
  // into the library would now fault).
  auto mappedName = kj::heapString(generation->library().mappedName());
  ASSERT_EQ(generation->library().unload(), PluginLibrary::UnloadResult::UNMAPPED);
  ASSERT_FALSE(anyMappingNamed(mappedName));

  EXPECT_EQ(generation->id(), 3u);
  EXPECT_EQ(toStd(generation->name()), "echo");
  EXPECT_EQ(toStd(generation->version()), "1.0.0");
  auto& service = generation->services()[0];
  EXPECT_EQ(toStd(service.name), "test.echo");
  EXPECT_EQ(toStd(service.interfaceName), "payhost::schema::FraudScreen");
  EXPECT_EQ(service.interfaceId, capnp::typeId<payhost::schema::FraudScreen>());
}

TEST(Generation, KeepsItsConfig) {
  auto generation = loadEcho(1, "label = \"v2\"\ndelay_ms = 5");
  EXPECT_EQ(toStd(generation->config().string("label", "")), "v2");
  EXPECT_EQ(generation->config().integer("delay_ms", 0), 5);
}

TEST(Generation, RecordsWhenItWasLoaded) {
  auto before = (kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS;
  auto generation = loadEcho(1);
  auto after = (kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS;
  EXPECT_GE(generation->loadedAtUnixMs(), before);
  EXPECT_LE(generation->loadedAtUnixMs(), after);
}

TEST(Generation, ClosesItsLibraryWhenTheLastReferenceGoes) {
  auto generation = loadEcho(1);
  auto mappedName = kj::heapString(generation->library().mappedName());
  auto second = generation->addRef();

  generation = nullptr;
  EXPECT_TRUE(anyMappingNamed(mappedName));
  EXPECT_STREQ(second->descriptor().name, "echo");

  second = nullptr;
  EXPECT_FALSE(anyMappingNamed(mappedName));
}

}  // namespace
}  // namespace payhost::host
