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

// A fresh directory under the run's artifacts root (test-artifacts.h), else $TMPDIR, removed
// with everything in it unless the run keeps it for the card-number scan.
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
  // Creates an empty database `name` on this server; returns its conninfo. Throws on failure.
  std::string createDatabase(const std::string& name);

  TempDir dir;
  pid_t pid = -1;
  std::string conninfo;
  std::string failure;
  bool attempted = false;
};

// The server of this test binary, once `PostgresEnvironment` set it up (and started it, for an
// environment that starts on first use); else null.
PostgresServer* postgresServer();

class PostgresEnvironment : public ::testing::Environment {
public:
  enum class Start { AT_SET_UP, ON_FIRST_USE };
  // ON_FIRST_USE: for binaries where most tests never call postgresServer(), so only the runs
  // that do pay for initdb.
  explicit PostgresEnvironment(Start when = Start::AT_SET_UP) : when(when) {}
  void SetUp() override;
  void TearDown() override;

private:
  Start when;
  PostgresServer server;
};

}  // namespace payhost::testsupport
