// Test support: a real PostgreSQL 15 server started by a test binary (initdb and postgres as the
// `postgres` user, on a unix socket in a temp dir, stopped by pid at the end), and a temp dir.
// Register `PostgresEnvironment` in main(); tests read `postgresServer()->conninfo`, which is
// empty (and `failure` says why) when the server could not be started: such tests fail, never
// skip.
#pragma once

#include <kj/common.h>

#include <gtest/gtest.h>

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace payhost::testsupport {

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
public:
  TempDir();
  // Under `base` instead (e.g. /dev/shm, for tests that commit thousands of times).
  explicit TempDir(const std::filesystem::path& base);
  ~TempDir();
  KJ_DISALLOW_COPY(TempDir);

  std::filesystem::path path;
};

class PostgresServer {
public:
  void start();
  void stop();
  std::string readLog();

  TempDir dir;
  pid_t pid = -1;
  std::string conninfo;
  std::string failure;
};

// The server of this test binary, once `PostgresEnvironment` set it up; else null.
PostgresServer* postgresServer();

class PostgresEnvironment : public ::testing::Environment {
public:
  void SetUp() override;
  void TearDown() override;

private:
  PostgresServer server;
};

}  // namespace payhost::testsupport
