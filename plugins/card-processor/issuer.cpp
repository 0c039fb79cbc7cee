#include "issuer.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cstdlib>

namespace payhost::plugins::card {

kj::StringPtr nameOf(TransactionState state) {
  switch (state) {
    case TransactionState::AUTHORIZED:
      return "authorized";
    case TransactionState::PARTIALLY_CAPTURED:
      return "partiallyCaptured";
    case TransactionState::CAPTURED:
      return "captured";
    case TransactionState::VOIDED:
      return "voided";
    case TransactionState::PARTIALLY_REFUNDED:
      return "partiallyRefunded";
    case TransactionState::REFUNDED:
      return "refunded";
    case TransactionState::EXPIRED:
      return "expired";
    case TransactionState::FAILED:
      return "failed";
  }
  KJ_UNREACHABLE;
}

kj::StringPtr nameOf(DeclineCode code) {
  switch (code) {
    case DeclineCode::DO_NOT_HONOR:
      return "doNotHonor";
    case DeclineCode::INSUFFICIENT_FUNDS:
      return "insufficientFunds";
    case DeclineCode::STOLEN_CARD:
      return "stolenCard";
    case DeclineCode::EXPIRED_CARD:
      return "expiredCard";
    case DeclineCode::AMOUNT_LIMIT_EXCEEDED:
      return "amountLimitExceeded";
  }
  KJ_UNREACHABLE;
}

kj::StringPtr nameOf(Advice advice) {
  switch (advice) {
    case Advice::DO_NOT_RETRY:
      return "doNotRetry";
    case Advice::RETRY_LATER:
      return "retryLater";
    case Advice::CONTACT_ISSUER:
      return "contactIssuer";
  }
  KJ_UNREACHABLE;
}

kj::StringPtr nameOf(RejectCode code) {
  switch (code) {
    case RejectCode::INVALID_REQUEST:
      return "invalidRequest";
    case RejectCode::IDEMPOTENCY_CONFLICT:
      return "idempotencyConflict";
    case RejectCode::INVALID_STATE:
      return "invalidState";
    case RejectCode::UNKNOWN_TRANSACTION:
      return "unknownTransaction";
    case RejectCode::AMOUNT_EXCEEDS_AVAILABLE:
      return "amountExceedsAvailable";
    case RejectCode::CURRENCY_MISMATCH:
      return "currencyMismatch";
  }
  KJ_UNREACHABLE;
}

namespace {

constexpr kj::StringPtr TOKEN_PREFIX = "tok_"_kj;

// A run this long may be a card number (PANs have 12 to 19 digits).
constexpr size_t CARD_NUMBER_MIN_DIGITS = 12;

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// Identifiers that end up in logs: no spaces or control characters, which could forge fields.
bool isPrintableId(kj::StringPtr id) {
  if (id.size() == 0 || id.size() > MAX_ID_BYTES) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

bool isWellFormedToken(kj::StringPtr token) {
  if (token.size() <= TOKEN_PREFIX.size() || token.size() > MAX_TOKEN_BYTES) return false;
  if (!token.startsWith(TOKEN_PREFIX)) return false;
  for (char c : token) {
    bool ok =
        isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool hasCardNumberRun(kj::StringPtr text) {
  size_t run = 0;
  for (char c : text) {
    run = isDigit(c) ? run + 1 : 0;
    if (run >= CARD_NUMBER_MIN_DIGITS) return true;
  }
  return false;
}

// Ids and keys are compared by exact bytes; the caller's text is never interpreted.
bool isValidKey(kj::StringPtr key) {
  return key.size() > 0 && key.size() <= MAX_ID_BYTES;
}

// A canonical encoding of a request's parameters, to tell a retry from a different request
// under the same idempotency key. Length prefixes keep ("ab","c") apart from ("a","bc").
class Parameters {
public:
  Parameters& add(kj::StringPtr text) {
    bytes.addAll(kj::str(text.size(), ':'));
    bytes.addAll(text);
    return *this;
  }
  Parameters& add(int64_t number) {
    bytes.addAll(kj::str(number, ';'));
    return *this;
  }
  kj::String finish() {
    bytes.add('\0');
    return kj::String(bytes.releaseAsArray());
  }

private:
  kj::Vector<char> bytes;
};

Outcome rejected(RejectCode code, kj::StringPtr message,
                 kj::Maybe<kj::String> transactionId = nullptr) {
  Outcome outcome{Result(Rejection{code, kj::heapString(message)})};
  outcome.transactionId = kj::mv(transactionId);
  return outcome;
}

// Validation shared by capture and refund.
kj::Maybe<kj::StringPtr> checkAmountRequest(kj::StringPtr transactionId, int64_t amount,
                                            kj::StringPtr currency, kj::StringPtr key) {
  if (!isValidKey(transactionId)) return "transactionId must be 1 to 255 bytes"_kj;
  if (amount <= 0) return "amount must be positive"_kj;
  if (!isValidCurrency(currency)) return "currency must be three upper-case letters"_kj;
  if (!isValidKey(key)) return "idempotencyKey must be 1 to 255 bytes"_kj;
  return nullptr;
}

kj::Maybe<kj::StringPtr> checkAuthorize(const AuthorizeRequest& request) {
  if (request.merchantId.size() == 0) return "merchantId is missing"_kj;
  if (!isPrintableId(request.merchantId)) {
    return "merchantId must be at most 255 printable characters without spaces"_kj;
  }
  if (request.amount <= 0) return "amount must be positive"_kj;
  if (!isValidCurrency(request.currency)) return "currency must be three upper-case letters"_kj;
  if (!isValidKey(request.idempotencyKey)) return "idempotencyKey must be 1 to 255 bytes"_kj;
  // Checked first and answered without the value: a card number must go nowhere, not even back.
  if (looksLikeCardNumber(request.cardToken)) {
    return "cardToken looks like a card number: send a vault token (tok_...), never a card "
           "number"_kj;
  }
  if (!isWellFormedToken(request.cardToken)) {
    return "cardToken must be a vault token: tok_ followed by up to 124 letters, digits, '_' "
           "or '-'"_kj;
  }
  if (request.metadata.size() > MAX_METADATA_ENTRIES) return "too many metadata entries"_kj;
  for (auto& entry : request.metadata) {
    if (entry.key.size() == 0 || entry.key.size() > MAX_METADATA_KEY_BYTES) {
      return "metadata keys must be 1 to 64 bytes"_kj;
    }
    if (entry.value.size() > MAX_METADATA_VALUE_BYTES) {
      return "metadata values must be at most 512 bytes"_kj;
    }
  }
  return nullptr;
}

int64_t checkedAdd(int64_t a, int64_t b) {
  int64_t sum;
  // The callers check against the remaining amount first, so this can only fire on a bug.
  KJ_ASSERT(!__builtin_add_overflow(a, b, &sum), "amount total overflows", a, b);
  return sum;
}

Money money(int64_t minorUnits, kj::StringPtr currency) {
  return Money{minorUnits, kj::heapString(currency)};
}

kj::Maybe<kj::String> cloneId(const kj::Maybe<kj::String>& id) {
  KJ_IF_MAYBE (text, id) {
    return kj::heapString(*text);
  }
  return nullptr;
}

}  // namespace

bool isValidCurrency(kj::StringPtr currency) {
  if (currency.size() != 3) return false;
  for (char c : currency) {
    if (c < 'A' || c > 'Z') return false;
  }
  return true;
}

bool looksLikeCardNumber(kj::StringPtr token) {
  bool anyDigit = false;
  for (char c : token) {
    if (isDigit(c)) {
      anyDigit = true;
    } else if (c != ' ' && c != '-') {
      return false;
    }
  }
  return anyDigit;
}

kj::StringPtr tokenForLog(kj::StringPtr token) {
  if (isWellFormedToken(token) && !hasCardNumberRun(token)) return token;
  return "[redacted]";
}

kj::StringPtr merchantForLog(kj::StringPtr merchantId) {
  return isPrintableId(merchantId) ? merchantId : "[invalid]"_kj;
}

kj::String authCodeFor(kj::StringPtr idempotencyKey) {
  // FNV-1a: any stable hash would do; this one needs no library.
  uint64_t hash = 14695981039346656037ull;
  for (char c : idempotencyKey) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  constexpr char ALPHABET[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  auto code = kj::heapString(6);
  for (auto& c : code) {
    c = ALPHABET[hash % 36];
    hash /= 36;
  }
  return code;
}

Result clone(const Result& result) {
  KJ_SWITCH_ONEOF(result) {
    KJ_CASE_ONEOF(approval, Approval) {
      return Approval{kj::heapString(approval.transactionId), kj::heapString(approval.authCode),
                      money(approval.amount.minorUnits, approval.amount.currency), approval.state};
    }
    KJ_CASE_ONEOF(decline, Decline) {
      return Decline{decline.code, decline.advice, kj::heapString(decline.reason),
                     kj::heapString(decline.transactionId)};
    }
    KJ_CASE_ONEOF(rejection, Rejection) {
      return Rejection{rejection.code, kj::heapString(rejection.message)};
    }
    KJ_CASE_ONEOF(unknown, Unknown) {
      return Unknown{kj::heapString(unknown.transactionId)};
    }
  }
  KJ_UNREACHABLE;
}

Issuer::Issuer(Options options, uint64_t idEpoch)
    : options_(options), idEpoch_(idEpoch), idPrefix(kj::str("txn_", kj::hex(idEpoch), "_")) {
  KJ_REQUIRE(options.maxAmountMinor > 0, "maxAmountMinor must be positive");
  KJ_REQUIRE(options.retention > 0 * kj::SECONDS, "retention must be positive");
  KJ_REQUIRE(options.maxTransactions > 0, "maxTransactions must be positive");
  KJ_REQUIRE(options.authWindow > 0 * kj::SECONDS, "authWindow must be positive");
  KJ_REQUIRE(options.slowDelay >= 0 * kj::SECONDS, "slowDelay must not be negative");
}

// ---------------------------------------------------------------------------------------------
// Idempotency

kj::Maybe<Outcome> Issuer::recall(Operation operation, kj::StringPtr key,
                                  kj::StringPtr parameters) {
  KJ_IF_MAYBE (entry, remembered[static_cast<size_t>(operation)].find(key)) {
    if (entry->parameters != parameters) {
      return rejected(RejectCode::IDEMPOTENCY_CONFLICT,
                      "idempotencyKey was already used with different parameters");
    }
    Outcome outcome{clone(entry->result)};
    outcome.transactionId = cloneId(entry->transactionId);
    outcome.replayed = true;
    return kj::mv(outcome);
  }
  return nullptr;
}

void Issuer::remember(Operation operation, kj::StringPtr key, kj::String parameters,
                      const Outcome& outcome, kj::Date now) {
  remembered[static_cast<size_t>(operation)].insert(
      kj::heapString(key),
      Remembered{kj::mv(parameters), clone(outcome.result), cloneId(outcome.transactionId), now});
  recordQueue.push_back(RecordRef{operation, kj::heapString(key)});
}

// ---------------------------------------------------------------------------------------------
// Bounds

size_t Issuer::recordsHeldForTest() const {
  size_t count = 0;
  for (auto& map : remembered)
    count += map.size();
  return count;
}

kj::Date Issuer::forgetTime(const Transaction& transaction) const {
  auto last = transaction.lastActivity;
  if (transaction.state == TransactionState::AUTHORIZED ||
      transaction.state == TransactionState::PARTIALLY_CAPTURED) {
    // The window closing is its last change (to expired, or to nothing more to capture).
    auto windowEnd = transaction.authorizedAt + options_.authWindow;
    if (windowEnd > last) last = windowEnd;
  }
  return last + options_.retention;
}

void Issuer::schedule(Transaction& transaction) {
  transaction.forgetAt = forgetTime(transaction);
  dueQueue.push(Due{transaction.forgetAt, ++scheduled, kj::heapString(transaction.id)});
}

void Issuer::forget(kj::Date now) {
  // Idempotency records: all those past the retention, then the oldest beyond the cap (leaving
  // room for the one this operation may add).
  size_t maxRecords = options_.maxTransactions * OPERATION_COUNT;
  while (!recordQueue.empty()) {
    auto& front = recordQueue.front();
    auto& map = remembered[static_cast<size_t>(front.operation)];
    KJ_IF_MAYBE (record, map.find(front.key)) {
      if (now - record->at < options_.retention && recordQueue.size() < maxRecords) break;
      map.erase(front.key);
    }
    recordQueue.pop_front();
  }
  // Transactions: those due, then beyond the cap those due soonest, whatever their state.
  while (!dueQueue.empty() &&
         (dueQueue.top().at <= now || transactions.size() >= options_.maxTransactions)) {
    auto& due = dueQueue.top();
    KJ_IF_MAYBE (transaction, transactions.find(due.id)) {
      if (transaction->forgetAt == due.at) transactions.erase(due.id);
    }
    dueQueue.pop();
  }
}

Outcome Issuer::notFound(kj::StringPtr transactionId) const {
  // Ids are txn_<epoch>_<n>, n counting from 1: one of ours up to the count was forgotten.
  if (transactionId.startsWith(idPrefix)) {
    auto number = transactionId.slice(idPrefix.size());
    bool digits = number.size() > 0 && number.size() <= 19;
    for (char c : number) {
      digits = digits && c >= '0' && c <= '9';
    }
    if (digits && number[0] != '0') {
      uint64_t n = strtoull(number.cStr(), nullptr, 10);
      if (n <= transactionCount) {
        return rejected(RejectCode::UNKNOWN_TRANSACTION,
                        "transaction forgotten: the simulated issuer keeps a transaction for "
                        "retention_s after its last operation, and at most max_transactions",
                        kj::heapString(transactionId));
      }
    }
  }
  return rejected(RejectCode::UNKNOWN_TRANSACTION, "no such transaction");
}

// ---------------------------------------------------------------------------------------------
// Operations: validate (not remembered: a corrected request may reuse its key), replay or
// refuse a reused key, then decide and remember the answer, errors included.

Outcome Issuer::authorize(const AuthorizeRequest& request, kj::Date now) {
  return authorizeOrPurchase(Operation::AUTHORIZE, request, now);
}

Outcome Issuer::purchase(const AuthorizeRequest& request, kj::Date now) {
  return authorizeOrPurchase(Operation::PURCHASE, request, now);
}

Outcome Issuer::authorizeOrPurchase(Operation operation, const AuthorizeRequest& request,
                                    kj::Date now) {
  forget(now);
  KJ_IF_MAYBE (problem, checkAuthorize(request)) {
    return rejected(RejectCode::INVALID_REQUEST, *problem);
  }
  Parameters parameters;
  parameters.add(request.merchantId).add(request.amount).add(request.currency);
  parameters.add(request.cardToken).add(static_cast<int64_t>(request.metadata.size()));
  for (auto& entry : request.metadata)
    parameters.add(entry.key).add(entry.value);
  auto canonical = parameters.finish();

  KJ_IF_MAYBE (replay, recall(operation, request.idempotencyKey, canonical)) {
    return kj::mv(*replay);
  }
  auto outcome = decideAuthorization(request, now, operation == Operation::PURCHASE);
  remember(operation, request.idempotencyKey, kj::mv(canonical), outcome, now);
  return outcome;
}

Outcome Issuer::capture(const CaptureRequest& request, kj::Date now) {
  forget(now);
  KJ_IF_MAYBE (problem, checkAmountRequest(request.transactionId, request.amount, request.currency,
                                           request.idempotencyKey)) {
    return rejected(RejectCode::INVALID_REQUEST, *problem);
  }
  auto canonical =
      Parameters().add(request.transactionId).add(request.amount).add(request.currency).finish();
  KJ_IF_MAYBE (replay, recall(Operation::CAPTURE, request.idempotencyKey, canonical)) {
    return kj::mv(*replay);
  }
  auto outcome = decideCapture(request, now);
  remember(Operation::CAPTURE, request.idempotencyKey, kj::mv(canonical), outcome, now);
  return outcome;
}

Outcome Issuer::voidAuthorization(const VoidRequest& request, kj::Date now) {
  forget(now);
  if (!isValidKey(request.transactionId)) {
    return rejected(RejectCode::INVALID_REQUEST, "transactionId must be 1 to 255 bytes");
  }
  if (!isValidKey(request.idempotencyKey)) {
    return rejected(RejectCode::INVALID_REQUEST, "idempotencyKey must be 1 to 255 bytes");
  }
  auto canonical = Parameters().add(request.transactionId).finish();
  KJ_IF_MAYBE (replay, recall(Operation::VOID, request.idempotencyKey, canonical)) {
    return kj::mv(*replay);
  }
  auto outcome = decideVoid(request, now);
  remember(Operation::VOID, request.idempotencyKey, kj::mv(canonical), outcome, now);
  return outcome;
}

Outcome Issuer::refund(const RefundRequest& request, kj::Date now) {
  forget(now);
  KJ_IF_MAYBE (problem, checkAmountRequest(request.transactionId, request.amount, request.currency,
                                           request.idempotencyKey)) {
    return rejected(RejectCode::INVALID_REQUEST, *problem);
  }
  auto canonical =
      Parameters().add(request.transactionId).add(request.amount).add(request.currency).finish();
  KJ_IF_MAYBE (replay, recall(Operation::REFUND, request.idempotencyKey, canonical)) {
    return kj::mv(*replay);
  }
  auto outcome = decideRefund(request, now);
  remember(Operation::REFUND, request.idempotencyKey, kj::mv(canonical), outcome, now);
  return outcome;
}

Outcome Issuer::sync(kj::StringPtr transactionId, kj::Date now) {
  forget(now);
  if (!isValidKey(transactionId)) {
    return rejected(RejectCode::INVALID_REQUEST, "transactionId must be 1 to 255 bytes");
  }
  KJ_IF_MAYBE (transaction, find(transactionId, now)) {
    Outcome outcome{Result(Unknown{})};
    KJ_IF_MAYBE (decline, transaction->decline) {
      outcome.result = Decline{decline->code, decline->advice, kj::heapString(decline->reason),
                               kj::heapString(decline->transactionId)};
    } else {
      outcome.result =
          Approval{kj::heapString(transaction->id), kj::heapString(transaction->authCode),
                   money(transaction->authorized, transaction->currency), transaction->state};
    }
    outcome.transactionId = kj::heapString(transaction->id);
    return outcome;
  }
  return notFound(transactionId);
}

// ---------------------------------------------------------------------------------------------
// Decisions

Outcome Issuer::decideAuthorization(const AuthorizeRequest& request, kj::Date now,
                                    bool captureAll) {
  auto id = kj::str(idPrefix, ++transactionCount);
  auto token = request.cardToken;

  Transaction transaction{kj::heapString(id),
                          authCodeFor(request.idempotencyKey),
                          kj::heapString(request.currency),
                          request.amount,
                          0,
                          0,
                          TransactionState::AUTHORIZED,
                          now,
                          nullptr,
                          now,
                          now};
  Outcome outcome{Result(Unknown{})};
  outcome.transactionId = kj::heapString(id);

  auto decline = [&](DeclineCode code, Advice advice, kj::StringPtr reason) {
    transaction.state = TransactionState::FAILED;
    transaction.decline = Decline{code, advice, kj::heapString(reason), kj::heapString(id)};
    outcome.result = Decline{code, advice, kj::heapString(reason), kj::heapString(id)};
  };

  // The card's own test behaviour wins; amount rules apply to cards that would approve.
  if (token == "tok_insufficient_funds") {
    decline(DeclineCode::INSUFFICIENT_FUNDS, Advice::RETRY_LATER, "insufficient funds");
  } else if (token == "tok_stolen") {
    decline(DeclineCode::STOLEN_CARD, Advice::DO_NOT_RETRY, "card reported stolen");
  } else if (token == "tok_expired") {
    decline(DeclineCode::EXPIRED_CARD, Advice::DO_NOT_RETRY, "card expired");
  } else if (token == "tok_timeout") {
    // The issuer approved (and, for a purchase, captured) but its answer was lost: `sync` tells
    // the caller what happened.
    if (captureAll) {
      transaction.captured = request.amount;
      transaction.state = TransactionState::CAPTURED;
    }
    outcome.result = Unknown{kj::heapString(id)};
  } else if (request.amount > options_.maxAmountMinor) {
    decline(DeclineCode::AMOUNT_LIMIT_EXCEEDED, Advice::DO_NOT_RETRY,
            "amount above the card's limit");
  } else if (request.amount % 100 == 51) {
    decline(DeclineCode::DO_NOT_HONOR, Advice::CONTACT_ISSUER, "do not honor");
  } else {
    if (captureAll) {
      transaction.captured = request.amount;
      transaction.state = TransactionState::CAPTURED;
    }
    outcome.result = Approval{kj::heapString(id), kj::heapString(transaction.authCode),
                              money(request.amount, request.currency), transaction.state};
  }
  if (token == "tok_slow") outcome.delay = options_.slowDelay;

  schedule(transaction);
  transactions.insert(kj::mv(id), kj::mv(transaction));
  return outcome;
}

Outcome Issuer::decideCapture(const CaptureRequest& request, kj::Date now) {
  KJ_IF_MAYBE (transaction, find(request.transactionId, now)) {
    auto id = [&]() { return kj::heapString(transaction->id); };
    switch (transaction->state) {
      case TransactionState::AUTHORIZED:
      case TransactionState::PARTIALLY_CAPTURED:
        break;
      default:
        return rejected(RejectCode::INVALID_STATE,
                        kj::str("cannot capture a transaction that is ", transaction->state), id());
    }
    // A partly captured authorization still expires: its remainder may no longer be captured.
    if (windowClosed(*transaction, now)) {
      return rejected(RejectCode::INVALID_STATE, "the authorization window has closed", id());
    }
    if (request.currency != transaction->currency) {
      return rejected(RejectCode::CURRENCY_MISMATCH,
                      kj::str("the authorization is in ", transaction->currency), id());
    }
    // Compared as a difference: `captured + amount` could overflow.
    int64_t available = transaction->authorized - transaction->captured;
    if (request.amount > available) {
      return rejected(RejectCode::AMOUNT_EXCEEDS_AVAILABLE,
                      kj::str("only ", available, " may still be captured"), id());
    }
    transaction->captured = checkedAdd(transaction->captured, request.amount);
    transaction->lastActivity = now;
    transaction->state = transaction->captured == transaction->authorized
                             ? TransactionState::CAPTURED
                             : TransactionState::PARTIALLY_CAPTURED;
    schedule(*transaction);
    Outcome outcome{Result(Approval{id(), kj::heapString(transaction->authCode),
                                    money(request.amount, request.currency), transaction->state})};
    outcome.transactionId = id();
    return outcome;
  }
  return notFound(request.transactionId);
}

Outcome Issuer::decideVoid(const VoidRequest& request, kj::Date now) {
  KJ_IF_MAYBE (transaction, find(request.transactionId, now)) {
    auto id = [&]() { return kj::heapString(transaction->id); };
    // Only a wholly uncaptured authorization can be released; captured money needs a refund.
    if (transaction->state != TransactionState::AUTHORIZED) {
      return rejected(RejectCode::INVALID_STATE,
                      kj::str("cannot void a transaction that is ", transaction->state), id());
    }
    transaction->state = TransactionState::VOIDED;
    transaction->lastActivity = now;
    schedule(*transaction);
    Outcome outcome{Result(Approval{id(), kj::heapString(transaction->authCode),
                                    money(transaction->authorized, transaction->currency),
                                    transaction->state})};
    outcome.transactionId = id();
    return outcome;
  }
  return notFound(request.transactionId);
}

Outcome Issuer::decideRefund(const RefundRequest& request, kj::Date now) {
  KJ_IF_MAYBE (transaction, find(request.transactionId, now)) {
    auto id = [&]() { return kj::heapString(transaction->id); };
    switch (transaction->state) {
      case TransactionState::PARTIALLY_CAPTURED:
      case TransactionState::CAPTURED:
      case TransactionState::PARTIALLY_REFUNDED:
        break;
      default:
        return rejected(RejectCode::INVALID_STATE,
                        kj::str("cannot refund a transaction that is ", transaction->state), id());
    }
    if (request.currency != transaction->currency) {
      return rejected(RejectCode::CURRENCY_MISMATCH,
                      kj::str("the transaction is in ", transaction->currency), id());
    }
    int64_t available = transaction->captured - transaction->refunded;
    if (request.amount > available) {
      return rejected(RejectCode::AMOUNT_EXCEEDS_AVAILABLE,
                      kj::str("only ", available, " may still be refunded"), id());
    }
    transaction->refunded = checkedAdd(transaction->refunded, request.amount);
    transaction->lastActivity = now;
    transaction->state = transaction->refunded == transaction->captured
                             ? TransactionState::REFUNDED
                             : TransactionState::PARTIALLY_REFUNDED;
    schedule(*transaction);
    Outcome outcome{Result(Approval{id(), kj::heapString(transaction->authCode),
                                    money(request.amount, request.currency), transaction->state})};
    outcome.transactionId = id();
    return outcome;
  }
  return notFound(request.transactionId);
}

kj::Maybe<Issuer::Transaction&> Issuer::find(kj::StringPtr transactionId, kj::Date now) {
  KJ_IF_MAYBE (transaction, transactions.find(transactionId)) {
    if (transaction->state == TransactionState::AUTHORIZED && windowClosed(*transaction, now)) {
      transaction->state = TransactionState::EXPIRED;
    }
    return *transaction;
  }
  return nullptr;
}

bool Issuer::windowClosed(const Transaction& transaction, kj::Date now) const {
  return now - transaction.authorizedAt >= options_.authWindow;
}

}  // namespace payhost::plugins::card
