@0xf0f2aeabd87c4194;
# Payment contracts: the services payment plugins provide and clients call.
#
# Evolution rule: add fields, methods and enumerants with higher ordinals only; never renumber,
# never reuse an ordinal, never change a type. A union's first member is `unspecified`, so a
# plugin that forgot to answer is told apart from a real outcome.
#
# Card data: requests carry vault tokens, never card numbers (the vault service is the only
# place a card number enters, and it never leaves it).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("payhost::schema");

struct Money {
  # An amount of money: a signed count of the currency's minor unit (cents for EUR, yen for JPY,
  # fils for KWD) and the ISO 4217 alphabetic code. Never a float.
  #
  # The currency's exponent (digits after the decimal point) comes from the ISO 4217 table in
  # the SDK (<payhost/money.h>): 0 for JPY, KRW, VND, CLP, ISK, ...; 3 for BHD, IQD, JOD, KWD,
  # LYD, OMR, TND; 2 for most others. So {minorUnits = 1234, currency = "KWD"} is 1.234 KWD and
  # {1234, "JPY"} is 1234 yen. Where a charge, capture, refund, quote or transfer is meant the
  # amount must be positive; arithmetic on amounts is checked, and an overflow is an error
  # (rejected), never a wrap. A currency that is not in the table is rejected.
  minorUnits @0 :Int64;
  currency @1 :Text;
  # Three upper-case letters, e.g. "EUR".
}

struct MetadataEntry {
  key @0 :Text;
  value @1 :Text;
}

enum TransactionState {
  # States of a card transaction. Allowed transitions (anything else is rejected with
  # `invalidState`):
  #   authorized -> partiallyCaptured | captured | voided | expired
  #   partiallyCaptured -> captured (the remainder may no longer be captured after a refund)
  #   captured | partiallyCaptured -> partiallyRefunded | refunded
  #   partiallyRefunded -> refunded
  unspecified @0;
  authorized @1;
  partiallyCaptured @2;
  captured @3;
  voided @4;
  partiallyRefunded @5;
  refunded @6;
  expired @7;
  failed @8;
  unknown @9;
  # Payments only: the card processor's answer to an authorization or purchase was lost (its
  # outcome was `unknown`). Only `Payments.sync` settles it: to authorized, captured, expired or
  # failed, as the card processor's `sync` says. Nothing else is allowed from it.
}

enum DeclineCode {
  unspecified @0;
  doNotHonor @1;
  insufficientFunds @2;
  stolenCard @3;
  expiredCard @4;
  amountLimitExceeded @5;
  suspectedFraud @6;
}

enum Advice {
  # What the merchant should do after a decline.
  unspecified @0;
  doNotRetry @1;
  retryLater @2;
  contactIssuer @3;
}

enum RejectCode {
  # Why a request was refused before anything happened. Never retryable as is.
  unspecified @0;
  invalidRequest @1;
  idempotencyConflict @2;
  # The key was used before with different parameters.
  invalidState @3;
  # The transaction's state does not allow the operation (e.g. capture after void).
  unknownTransaction @4;
  amountExceedsAvailable @5;
  # Capture above the authorized amount, or refund above the captured amount.
  currencyMismatch @6;
  quoteExpired @7;
  # An FX quote was used after its expiry; ask for a new quote.
  unknownQuote @8;
  # An FX quote id this service never issued (or has forgotten).
  unsupportedCurrency @9;
  # The currency is not in the ISO 4217 table, or the service has no rate for it.
  amountOverflow @10;
  # The result would not fit a signed 64-bit count of minor units.
  invalidCard @11;
  # The vault refused a card: bad length for its brand, failed Luhn check, bad expiry. The
  # message never repeats the card number.
  unknownToken @12;
  # A vault token this vault never issued, or one that was deleted.
}

struct Approval {
  transactionId @0 :Text;
  authCode @1 :Text;
  # Six characters, as issued by the (simulated) issuer.
  amount @2 :Money;
  # The amount this operation approved.
  state @3 :TransactionState;
  # The transaction's state after the operation.
}

struct Decline {
  code @0 :DeclineCode;
  reason @1 :Text;
  advice @2 :Advice;
  transactionId @3 :Text;
}

struct Rejection {
  code @0 :RejectCode;
  message @1 :Text;
}

struct PaymentResult {
  # The outcome of one payment operation. Business outcomes are values, not exceptions; an
  # exception from a call means the host or transport failed (overloaded, disconnected, ...).
  union {
    unspecified @0 :Void;
    approved @1 :Approval;
    pending @2 :Text;
    # Accepted, outcome follows; the text is the transaction id to `sync` on.
    declined @3 :Decline;
    rejected @4 :Rejection;
    notAttempted @5 :Text;
    # Nothing happened; safe to retry with the same idempotency key. The text says why.
    unknown @6 :Text;
    # The outcome is not known (e.g. the issuer timed out). Settle it with `sync` on the
    # transaction id in the text; never resubmit.
  }
}

struct AuthorizeRequest {
  merchantId @0 :Text;
  amount @1 :Money;
  # Must be positive.
  cardToken @2 :Text;
  # A vault token.
  idempotencyKey @3 :Text;
  # At most 255 bytes. The same key with the same request returns the first result; with a
  # different request it is rejected with `idempotencyConflict`.
  metadata @4 :List(MetadataEntry);
}

struct CaptureRequest {
  transactionId @0 :Text;
  amount @1 :Money;
  # At most the authorized amount not yet captured; partial captures allowed.
  idempotencyKey @2 :Text;
}

struct VoidRequest {
  transactionId @0 :Text;
  idempotencyKey @1 :Text;
}

struct RefundRequest {
  transactionId @0 :Text;
  amount @1 :Money;
  # Partial and repeated refunds allowed, never more than captured in total.
  idempotencyKey @2 :Text;
}

interface CardProcessor {
  # Authorizes and settles card payments with an issuer.
  authorize @0 (request :AuthorizeRequest) -> (result :PaymentResult);
  capture @1 (request :CaptureRequest) -> (result :PaymentResult);
  voidAuthorization @2 (request :VoidRequest) -> (result :PaymentResult);
  refund @3 (request :RefundRequest) -> (result :PaymentResult);
  sync @4 (transactionId :Text) -> (result :PaymentResult);
  # Ask for the current state of a transaction, e.g. after an `unknown` outcome.
  purchase @5 (request :AuthorizeRequest) -> (result :PaymentResult);
  # Authorize and capture the whole amount in one step; an approval ends in state `captured`.
  # Idempotency keys of `purchase` are their own namespace (not shared with `authorize`).
}

# ===========================================================================================
# Card vault
#
# The only place a card number (PAN) enters payhost. `Vault` is what merchants and front ends
# call: it takes a card number once and hands back a token; nothing in it returns the number.
# `VaultReveal` is a separate interface, served under a separate service name
# (`payments.vault.reveal`), for the one internal caller that must send the number to an issuer
# (the card processor). Operators expose `payments.vault` to merchants and keep
# `payments.vault.reveal` off every merchant-facing listener; plugins reach it in process through
# `Context::service` only when the operator's config routes it to them.

enum CardBrand {
  unspecified @0;
  visa @1;
  mastercard @2;
  amex @3;
  discover @4;
  jcb @5;
  dinersClub @6;
  unionPay @7;
  maestro @8;
  other @9;
  # Passes the Luhn check and is 12 to 19 digits, but matches no known brand's prefix.
}

struct TokenizeRequest {
  pan @0 :Text;
  # The card number: digits only (spaces and dashes between groups are ignored). Checked with
  # the Luhn algorithm and the length rules of its brand (12 to 19 digits). Never logged, never
  # echoed in an error.
  expiryMonth @1 :UInt8;
  # 1 to 12.
  expiryYear @2 :UInt16;
  # Four digits, e.g. 2029. A card expired before the current month is refused.
}

struct CardInfo {
  # What may be shown about a stored card: never the number.
  token @0 :Text;
  # `tok_` followed by random characters; not derived from the card number, so two
  # tokenizations of one card give two tokens.
  brand @1 :CardBrand;
  last4 @2 :Text;
  expiryMonth @3 :UInt8;
  expiryYear @4 :UInt16;
}

struct VaultResult {
  union {
    unspecified @0 :Void;
    card @1 :CardInfo;
    rejected @2 :Rejection;
    # `invalidCard` (tokenize), `unknownToken` (describe, deleteToken), `invalidRequest`.
    deleted @3 :Text;
    # deleteToken: the token that was deleted; the card number is gone for good.
  }
}

interface Vault {
  tokenize @0 (request :TokenizeRequest) -> (result :VaultResult);
  describe @1 (token :Text) -> (result :VaultResult);
  # Brand, last four digits and expiry of a stored card.
  deleteToken @2 (token :Text) -> (result :VaultResult);
}

struct RevealedCard {
  pan @0 :Text;
  expiryMonth @1 :UInt8;
  expiryYear @2 :UInt16;
  brand @3 :CardBrand;
}

struct RevealResult {
  union {
    unspecified @0 :Void;
    card @1 :RevealedCard;
    rejected @2 :Rejection;
  }
}

interface VaultReveal {
  # Internal only (service `payments.vault.reveal`): never expose it to merchants.
  reveal @0 (token :Text, purpose :Text) -> (result :RevealResult);
  # The card behind `token`. `purpose` (e.g. "authorize txn_0_12") is logged with the token, so
  # every reveal leaves an audit record; the number itself is never logged.
}

# ===========================================================================================
# Fraud screening

struct ScreenRequest {
  merchantId @0 :Text;
  amount @1 :Money;
  cardToken @2 :Text;
  cardCountry @3 :Text;
  # ISO 3166-1 alpha-2 of the issuing country, if known.
  ipCountry @4 :Text;
  # ISO 3166-1 alpha-2 of the buyer's IP address, if known.
  merchantCountry @5 :Text;
  # ISO 3166-1 alpha-2 of the merchant, if known.
}

enum FraudDecision {
  unspecified @0;
  allow @1;
  review @2;
  deny @3;
  rejected @4;
  # The request was invalid (see `FraudVerdict.rejection`); nothing was counted.
}

struct FiredRule {
  name @0 :Text;
  # e.g. "velocity.card", "velocity.merchant", "amount.limit", "country.mismatch".
  score @1 :UInt32;
  # What this rule added to the verdict's score.
  detail @2 :Text;
  # Human-readable, e.g. "6 attempts in 60s (limit 5)". Never card data.
}

struct FraudVerdict {
  decision @0 :FraudDecision;
  score @1 :UInt32;
  # 0 (clean) to 1000 (certain fraud).
  firedRules @2 :List(Text);
  # Names of the rules that fired, in evaluation order.
  rules @3 :List(FiredRule);
  # The same rules with their scores and details.
  rejection @4 :Rejection;
  # Set when `decision` is `rejected`.
}

interface FraudScreen {
  screen @0 (request :ScreenRequest) -> (verdict :FraudVerdict);
}

# ===========================================================================================
# Foreign exchange

struct FxQuote {
  quoteId @0 :Text;
  source @1 :Money;
  target @2 :Money;
  rate @3 :Text;
  # Exact decimal string, e.g. "1.0842": units of the target currency per unit of the source
  # currency (major units, not minor). target = source * rate, rounded half-even to the target
  # currency's minor unit.
  expiresAtUnixMs @4 :Int64;
}

struct FxResult {
  union {
    unspecified @0 :Void;
    quote @1 :FxQuote;
    # From `quote`: a rate held until `expiresAtUnixMs`.
    rejected @2 :Rejection;
    # `unsupportedCurrency`, `amountOverflow`, `quoteExpired`, `unknownQuote`, `currencyMismatch`,
    # `invalidRequest`.
    converted @3 :FxQuote;
    # From `convert`: `source` is the amount converted, `target` what it became at the quote's
    # rate, `quoteId`, `rate` and `expiresAtUnixMs` those of the quote.
  }
}

interface Fx {
  quote @0 (source :Money, targetCurrency :Text) -> (result :FxResult);
  # A quote for converting `source` (positive) into `targetCurrency`, valid until its expiry.
  convert @1 (quoteId :Text, amount :Money) -> (result :FxResult);
  # Converts at a quote's rate, before its expiry (`quoteExpired` after). `amount` must be in the
  # quote's source currency and positive; leave it unset (null) to convert the quoted amount.
  # Nothing is stored by a conversion: converting twice gives the same answer twice.
}

# ===========================================================================================
# Ledger
#
# Double-entry accounts and transfers, one ledger per currency (the ledger of an account or a
# transfer is its currency code). An account is named by (accountId, currency) and must be
# created before a transfer names it. Every transfer moves a positive amount from one account's
# debits to another account's credits in the same ledger, so in every ledger the sum of all
# debits equals the sum of all credits, pending and posted alike.
#
# Two-phase transfers: a `pending` transfer reserves the amount (debitsPending and
# creditsPending); exactly one `postPending` (of at most the pending amount: the rest is
# released), `voidPending`, or expiry (its timeout passed, by the ledger's clock) resolves it.
#
# Transfers are immutable and there is at most one per id: a transfer id is its idempotency key.
# A request whose id was recorded before with the same fields returns the first result
# (`replayed` is true) and changes nothing; with different fields it is rejected with
# `idempotencyConflict` and changes nothing. A rejected transfer is not recorded: its id stays
# free. Every balance can be recomputed from the transfer log (`audit`).

enum TransferKind {
  unspecified @0;
  # Read as `posted`, for clients written before the kinds existed.
  posted @1;
  # Single-phase: debits and credits posted at once.
  pending @2;
  postPending @3;
  voidPending @4;
  expirePending @5;
  # Written by the ledger when a pending transfer's timeout passes; never requested.
}

struct TransferRequest {
  transferId @0 :Text;
  # At most one transfer per id; a repeat with the same fields returns the first result.
  # 1 to 255 bytes.
  debitAccount @1 :Text;
  creditAccount @2 :Text;
  # For postPending and voidPending both may be empty (the pending transfer's are used) or must
  # equal the pending transfer's.
  amount @3 :Money;
  # Positive. postPending: at most the pending amount. voidPending: zero or the pending amount.
  kind @4 :TransferKind;
  pendingId @5 :Text;
  # postPending and voidPending: the pending transfer they resolve.
  timeoutMs @6 :Int64;
  # pending: it expires this many milliseconds after it was recorded (0: never).
}

struct LedgerResult {
  union {
    unspecified @0 :Void;
    posted @1 :Text;
    # Recorded (or recorded before, see `replayed`): the transfer id.
    rejected @2 :Rejection;
  }
  replayed @3 :Bool;
  # The id was already recorded with the same fields: nothing changed now.
}

struct Balance {
  accountId @0 :Text;
  debits @1 :Money;
  credits @2 :Money;
  # Posted.
  debitsPending @3 :Money;
  creditsPending @4 :Money;
  exists @5 :Bool;
  flags @6 :AccountFlags;
}

struct AccountFlags {
  debitsMustNotExceedCredits @0 :Bool;
  # Pending and posted debits together never above posted credits (e.g. a merchant's payable).
  creditsMustNotExceedDebits @1 :Bool;
}

struct AccountRequest {
  accountId @0 :Text;
  # 1 to 255 bytes.
  currency @1 :Text;
  flags @2 :AccountFlags;
  # Creating an existing account with the same flags succeeds (replayed); with other flags it is
  # rejected with `idempotencyConflict`.
}

struct AuditReport {
  # The ledger of one currency recomputed from its transfer log and compared with the stored
  # balances.
  currency @0 :Text;
  transfers @1 :UInt64;
  accounts @2 :UInt32;
  debitsEqualCredits @3 :Bool;
  # Sums over every account, posted and pending each.
  mismatches @4 :List(Text);
  # One line per account whose stored balance differs from the replay; empty when all match.
}

interface Ledger {
  transfer @0 (request :TransferRequest) -> (result :LedgerResult);
  balance @1 (accountId :Text, currency :Text) -> (balance :Balance);
  createAccount @2 (request :AccountRequest) -> (result :LedgerResult);
  transferAll @3 (requests :List(TransferRequest)) -> (result :LedgerResult);
  # Linked transfers, applied all or none (in order, each seeing the ones before it): the
  # result is `posted` with the first id, or the first rejection (its message names the index).
  balances @4 (currency :Text) -> (balances :List(Balance));
  # Every account of the currency's ledger.
  audit @5 (currency :Text) -> (report :AuditReport);
  expire @6 () -> (expired :UInt32);
  # Records the expiry of every pending transfer whose timeout has passed (the ledger also does
  # this on its own timer and whenever a post or void names one).
}
