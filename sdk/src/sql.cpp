#include <payhost/sql.h>

#include <cstring>

namespace payhost {

namespace {

kj::StringPtr typeName(SqlType type) {
  switch (type) {
    case SqlType::NULL_:
      return "NULL";
    case SqlType::INTEGER:
      return "INTEGER";
    case SqlType::REAL:
      return "REAL";
    case SqlType::TEXT:
      return "TEXT";
    case SqlType::BLOB:
      return "BLOB";
  }
  return "unknown";
}

}  // namespace

SqlValue SqlValue::ofText(kj::ArrayPtr<const char> text) {
  SqlValue value;
  value.type = SqlType::TEXT;
  value.bytes = kj::heapArray<kj::byte>(text.size() + 1);
  if (text.size() > 0) memcpy(value.bytes.begin(), text.begin(), text.size());
  value.bytes.back() = 0;
  return value;
}

SqlResult::SqlResult(kj::Array<kj::String> columns, kj::Array<SqlValue> cells, uint64_t changes)
    : columns_(kj::mv(columns)), cells_(kj::mv(cells)), changes_(changes) {
  KJ_REQUIRE(columns_.size() == 0 ? cells_.size() == 0 : cells_.size() % columns_.size() == 0,
             "SqlResult: cells are not a whole number of rows");
}

size_t SqlResult::rowCount() const {
  return columns_.size() == 0 ? 0 : cells_.size() / columns_.size();
}

const SqlValue& SqlResult::cell(size_t row, size_t column) const {
  if (row >= rowCount() || column >= columns_.size()) {
    KJ_FAIL_REQUIRE(kj::str("SQL result: cell (row ", row, ", column ", column,
                            ") is out of range (", rowCount(), " rows, ", columns_.size(),
                            " columns)"));
  }
  return cells_[row * columns_.size() + column];
}

const SqlValue& SqlResult::typed(size_t row, size_t column, SqlType type) const {
  auto& value = cell(row, column);
  if (value.type != type) {
    KJ_FAIL_REQUIRE(kj::str("SQL result: cell (row ", row, ", column ", column, " '",
                            columns_[column], "') is ", typeName(value.type), ", not ",
                            typeName(type)));
  }
  return value;
}

bool SqlResult::isNull(size_t row, size_t column) const {
  return cell(row, column).type == SqlType::NULL_;
}

int64_t SqlResult::integer(size_t row, size_t column) const {
  return typed(row, column, SqlType::INTEGER).integer;
}

double SqlResult::real(size_t row, size_t column) const {
  auto& value = cell(row, column);
  if (value.type == SqlType::INTEGER) return static_cast<double>(value.integer);
  return typed(row, column, SqlType::REAL).real;
}

kj::StringPtr SqlResult::text(size_t row, size_t column) const {
  auto& value = typed(row, column, SqlType::TEXT);
  return kj::StringPtr(reinterpret_cast<const char*>(value.bytes.begin()), value.bytes.size() - 1);
}

kj::ArrayPtr<const kj::byte> SqlResult::blob(size_t row, size_t column) const {
  return typed(row, column, SqlType::BLOB).bytes;
}

kj::Promise<SqlResult> Database::execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
  // Copies: the statement runs on a worker thread after this call returns.
  struct Copy {
    kj::String sql;
    kj::Array<SqlValue> values;
  };
  auto copy = kj::heap<Copy>();
  copy->sql = kj::heapString(sql);
  copy->values = KJ_MAP(param, params) {
    SqlValue value;
    value.type = param.type();
    value.integer = param.integer();
    value.real = param.real();
    if (param.type() == SqlType::TEXT) {
      value.bytes = kj::heapArray<kj::byte>(param.bytes().size() + 1);
      memcpy(value.bytes.begin(), param.bytes().begin(), param.bytes().size());
      value.bytes.back() = 0;
    } else {
      value.bytes = kj::heapArray(param.bytes());
    }
    return value;
  };
  return transaction([copy = kj::mv(copy)](SqlTransaction& tx) {
    // Named with its constness: KJ_MAP over `copy->values` does not compile with clang.
    const auto& values = copy->values;
    auto bound = KJ_MAP(value, values)->SqlParam {
      switch (value.type) {
        case SqlType::NULL_:
          return nullptr;
        case SqlType::INTEGER:
          return value.integer;
        case SqlType::REAL:
          return value.real;
        case SqlType::TEXT:
          return kj::StringPtr(reinterpret_cast<const char*>(value.bytes.begin()),
                               value.bytes.size() - 1);
        case SqlType::BLOB:
          return value.bytes.asPtr();
      }
      return nullptr;
    };
    return tx.execute(copy->sql, bound);
  });
}

}  // namespace payhost
