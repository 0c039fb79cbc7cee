// payhost-client: an example client of payhostd's Gateway. It shows what every client does:
// connect, bootstrap the Gateway, get a service by name, cast it to its interface and call it.
//
//   payhost-client --connect 127.0.0.1:7400 list
//   payhost-client --connect 127.0.0.1:7400 authorize --amount 1250 --currency EUR
//       --token tok_visa_approve --key order-1001
//   payhost-client --connect 127.0.0.1:7400 demo
//   payhost-client --connect 127.0.0.1:7400 flow     # payments.payments, then payments.ledger
//
// payhostd serves TLS with client certificates unless a listener is configured `insecure`:
//   payhost-client --connect 127.0.0.1:7400 --ca ca.pem --cert merchant-a.pem
//       --key merchant-a.key list
// The server's certificate must be issued by `--ca` for `--server-name` (default: the host in
// `--connect`; "localhost" for loopback addresses and unix sockets); `--cert`'s subject CN is who
// payhostd says is calling. Without `--ca` the client speaks plaintext (for an `insecure = true`
// listener).
//
// It depends on the SDK's schemas only, like any client would.

#include <payhost/flow.capnp.h>
#include <payhost/host.capnp.h>
#include <payhost/money.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <capnp/schema.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>
#include <kj/debug.h>
#include <kj/filesystem.h>

#include <CLI/CLI.hpp>

#include <cinttypes>
#include <cstdio>
#include <map>
#include <string>

namespace {

using payhost::schema::CardProcessor;
using payhost::schema::Gateway;
using payhost::schema::Ledger;
using payhost::schema::PaymentResult;
using payhost::schema::Payments;

// The enumerant's name as written in the schema ("insufficientFunds").
template <typename Enum>
kj::StringPtr nameOf(Enum value) {
  auto enumerants = capnp::Schema::from<Enum>().getEnumerants();
  auto index = static_cast<uint16_t>(value);
  return index < enumerants.size() ? enumerants[index].getProto().getName() : "unknown";
}

// "12.50 EUR" (the currency's ISO 4217 exponent; minor units for a code the table lacks).
kj::String money(int64_t minorUnits, kj::StringPtr currency) {
  KJ_IF_MAYBE (info, payhost::findCurrency(currency)) {
    return kj::str(payhost::formatMinorUnits(minorUnits, info->exponent), " ", currency);
  }
  return kj::str(minorUnits, " ", currency, " (minor units)");
}

kj::String money(payhost::schema::Money::Reader amount) {
  return money(amount.getMinorUnits(), amount.getCurrency());
}

const char* stateName(payhost::schema::TransactionState state) {
  using S = payhost::schema::TransactionState;
  switch (state) {
    case S::AUTHORIZED:
      return "authorized";
    case S::PARTIALLY_CAPTURED:
      return "partially-captured";
    case S::CAPTURED:
      return "captured";
    case S::VOIDED:
      return "voided";
    case S::PARTIALLY_REFUNDED:
      return "partially-refunded";
    case S::REFUNDED:
      return "refunded";
    case S::EXPIRED:
      return "expired";
    case S::FAILED:
      return "failed";
    case S::UNKNOWN:
      return "unknown";
    default:
      return "unspecified";
  }
}

// Prints one outcome on one line and returns the transaction id, if any.
std::string printResult(kj::StringPtr what, PaymentResult::Reader result) {
  switch (result.which()) {
    case PaymentResult::APPROVED: {
      auto approval = result.getApproved();
      printf("%-22s approved   txn=%s auth=%s amount=%s state=%s\n", what.cStr(),
             approval.getTransactionId().cStr(), approval.getAuthCode().cStr(),
             money(approval.getAmount()).cStr(), stateName(approval.getState()));
      return approval.getTransactionId();
    }
    case PaymentResult::DECLINED: {
      auto decline = result.getDeclined();
      printf("%-22s declined   code=%s advice=%s reason=\"%s\"\n", what.cStr(),
             nameOf(decline.getCode()).cStr(), nameOf(decline.getAdvice()).cStr(),
             decline.getReason().cStr());
      return decline.getTransactionId();
    }
    case PaymentResult::REJECTED:
      printf("%-22s rejected   code=%s: %s\n", what.cStr(),
             nameOf(result.getRejected().getCode()).cStr(),
             result.getRejected().getMessage().cStr());
      return "";
    case PaymentResult::PENDING:
      printf("%-22s pending    txn=%s\n", what.cStr(), result.getPending().cStr());
      return result.getPending();
    case PaymentResult::NOT_ATTEMPTED:
      printf("%-22s not-attempted %s\n", what.cStr(), result.getNotAttempted().cStr());
      return "";
    case PaymentResult::UNKNOWN:
      printf("%-22s unknown    txn=%s (settle with sync)\n", what.cStr(),
             result.getUnknown().cStr());
      return result.getUnknown();
    default:
      printf("%-22s (no outcome)\n", what.cStr());
      return "";
  }
}

struct Payment {
  std::string merchant = "merchant-1";
  int64_t amount = 1250;
  std::string currency = "EUR";
  std::string token = "tok_visa_approve";
  std::string key;
  std::string transaction;
};

kj::Promise<std::string> authorize(CardProcessor::Client& card, const Payment& p,
                                   kj::StringPtr label) {
  auto request = card.authorizeRequest();
  auto body = request.initRequest();
  body.setMerchantId(p.merchant);
  body.initAmount().setMinorUnits(p.amount);
  body.getAmount().setCurrency(p.currency);
  body.setCardToken(p.token);
  body.setIdempotencyKey(p.key);
  return request.send().then([label = kj::heapString(label)](auto response) {
    return printResult(label, response.getResult());
  });
}

kj::Promise<std::string> capture(CardProcessor::Client& card, const Payment& p,
                                 kj::StringPtr label) {
  auto request = card.captureRequest();
  auto body = request.initRequest();
  body.setTransactionId(p.transaction);
  body.initAmount().setMinorUnits(p.amount);
  body.getAmount().setCurrency(p.currency);
  body.setIdempotencyKey(p.key);
  return request.send().then([label = kj::heapString(label)](auto response) {
    return printResult(label, response.getResult());
  });
}

kj::Promise<std::string> refund(CardProcessor::Client& card, const Payment& p,
                                kj::StringPtr label) {
  auto request = card.refundRequest();
  auto body = request.initRequest();
  body.setTransactionId(p.transaction);
  body.initAmount().setMinorUnits(p.amount);
  body.getAmount().setCurrency(p.currency);
  body.setIdempotencyKey(p.key);
  return request.send().then([label = kj::heapString(label)](auto response) {
    return printResult(label, response.getResult());
  });
}

kj::Promise<std::string> voidAuthorization(CardProcessor::Client& card, const Payment& p,
                                           kj::StringPtr label) {
  auto request = card.voidAuthorizationRequest();
  auto body = request.initRequest();
  body.setTransactionId(p.transaction);
  body.setIdempotencyKey(p.key);
  return request.send().then([label = kj::heapString(label)](auto response) {
    return printResult(label, response.getResult());
  });
}

// A short tour of the card processor: approvals, declines, partial capture and refund, a void,
// an idempotent replay and a conflicting one.
void runDemo(CardProcessor::Client& card, kj::WaitScope& ws) {
  Payment p;
  p.key = "demo-order-1";
  p.transaction = authorize(card, p, "authorize 12.50 EUR").wait(ws);
  authorize(card, p, "  replay same key").wait(ws);
  Payment conflict = p;
  conflict.amount = 9999;
  authorize(card, conflict, "  same key, new amount").wait(ws);
  Payment part = p;
  part.amount = 1000;
  part.key = "demo-capture-1";
  capture(card, part, "capture 10.00").wait(ws);
  part.amount = 400;
  part.key = "demo-refund-1";
  refund(card, part, "refund 4.00").wait(ws);
  part.amount = 700;
  part.key = "demo-refund-2";
  refund(card, part, "refund 7.00 (too much)").wait(ws);

  Payment declined;
  declined.token = "tok_insufficient_funds";
  declined.key = "demo-order-2";
  authorize(card, declined, "authorize, no funds").wait(ws);
  declined.token = "tok_stolen";
  declined.key = "demo-order-3";
  authorize(card, declined, "authorize, stolen").wait(ws);

  Payment jpy;
  jpy.currency = "JPY";
  jpy.amount = 5000;
  jpy.key = "demo-order-4";
  jpy.transaction = authorize(card, jpy, "authorize 5000 JPY").wait(ws);
  jpy.key = "demo-void-4";
  voidAuthorization(card, jpy, "void").wait(ws);
  jpy.key = "demo-capture-4";
  capture(card, jpy, "capture after void").wait(ws);
}

// ---------------------------------------------------------------------------------------------
// `flow`: the payment flow through `payments.payments` (fraud screen, card processor, FX and
// ledger behind it), then the ledger's balances and its audit. Idempotency keys are
// `<prefix>-1`, `<prefix>-2`...: running it again with the same prefix replays every result and
// changes nothing.

struct Flow {
  Flow(Payments::Client payments, Ledger::Client ledger, kj::WaitScope& ws, std::string merchant,
       std::string prefix)
      : payments(kj::mv(payments)),
        ledger(kj::mv(ledger)),
        ws(ws),
        merchant(kj::mv(merchant)),
        prefix(kj::mv(prefix)) {}

  Payments::Client payments;
  Ledger::Client ledger;
  kj::WaitScope& ws;
  std::string merchant;
  std::string prefix;
  int keys = 0;
  kj::Vector<kj::String> paymentIds;

  kj::String nextKey() { return kj::str(prefix.c_str(), "-", ++keys); }

  std::string pay(kj::StringPtr label, bool capture, int64_t amount, kj::StringPtr currency,
                  kj::StringPtr token, kj::StringPtr settlement = "") {
    auto fill = [&](payhost::schema::PaymentRequest::Builder r) {
      r.setMerchantId(merchant);
      r.initAmount().setMinorUnits(amount);
      r.getAmount().setCurrency(currency);
      r.setCardToken(token);
      r.setIdempotencyKey(nextKey());
      r.setSettlementCurrency(settlement);
      r.setCardCountry("DE");
      r.setIpCountry("DE");
    };
    std::string id;
    if (capture) {
      auto request = payments.purchaseRequest();
      fill(request.initRequest());
      auto response = request.send().wait(ws);
      id = printResult(label, response.getResult());
    } else {
      auto request = payments.authorizeRequest();
      fill(request.initRequest());
      auto response = request.send().wait(ws);
      id = printResult(label, response.getResult());
    }
    if (!id.empty()) paymentIds.add(kj::heapString(id));
    return id;
  }

  template <typename Request>
  void operate(kj::StringPtr label, Request&& request, const std::string& id, int64_t amount,
               kj::StringPtr currency) {
    auto body = request.initRequest();
    body.setPaymentId(id);
    body.initAmount().setMinorUnits(amount);
    body.getAmount().setCurrency(currency);
    body.setIdempotencyKey(nextKey());
    auto response = request.send().wait(ws);
    printResult(label, response.getResult());
  }

  // `Payments.sync` of one payment, printed: settles a payment whose card answer was lost.
  void sync(kj::StringPtr label, const std::string& id) {
    auto request = payments.syncRequest();
    request.setPaymentId(id);
    auto response = request.send().wait(ws);
    auto p = response.getPayment();
    printf("%-22s %-10s state=%s authorized=%s captured=%s\n", label.cStr(), "synced",
           stateName(p.getState()), money(p.getAuthorized()).cStr(), money(p.getCaptured()).cStr());
  }

  // The payments as recorded; returns what each currency's merchant account should hold (the
  // sum of `settled`).
  std::map<std::string, int64_t> printPayments() {
    std::map<std::string, int64_t> settled;
    printf("\n%-34s %-18s %12s %12s %12s %16s\n", "payment (sync)", "state", "authorized",
           "captured", "refunded", "settled");
    for (auto& id : paymentIds) {
      auto request = payments.syncRequest();
      request.setPaymentId(id);
      auto response = request.send().wait(ws);
      auto p = response.getPayment();
      printf("%-34s %-18s %12s %12s %12s %16s\n", id.cStr(), stateName(p.getState()),
             money(p.getAuthorized()).cStr(), money(p.getCaptured()).cStr(),
             money(p.getRefunded()).cStr(), money(p.getSettled()).cStr());
      if (p.getSettled().getCurrency().size() > 0) {
        settled[p.getSettled().getCurrency()] += p.getSettled().getMinorUnits();
      }
    }
    return settled;
  }

  // One currency's ledger: every account, the totals, the audit by replay, and merchant's
  // balance against `expected`. False when something does not add up.
  bool printLedger(kj::StringPtr currency, int64_t expected) {
    auto request = ledger.balancesRequest();
    request.setCurrency(currency);
    auto response = request.send().wait(ws);
    printf("\nledger %s %-23s %14s %14s %14s %14s\n", currency.cStr(), "account", "debits",
           "credits", "pending", "net");
    int64_t debits = 0, credits = 0, pendingDebits = 0, pendingCredits = 0;
    int64_t merchantNet = 0;
    auto merchantAccount = kj::str("merchant:", merchant.c_str());
    bool overflow = false;
    for (auto b : response.getBalances()) {
      int64_t d = b.getDebits().getMinorUnits(), c = b.getCredits().getMinorUnits();
      int64_t pd = b.getDebitsPending().getMinorUnits();
      int64_t pc = b.getCreditsPending().getMinorUnits();
      printf("           %-23s %14s %14s %14s %14s\n", b.getAccountId().cStr(),
             money(d, currency).cStr(), money(c, currency).cStr(), money(pc - pd, currency).cStr(),
             money(c - d, currency).cStr());
      overflow |= __builtin_add_overflow(debits, d, &debits);
      overflow |= __builtin_add_overflow(credits, c, &credits);
      overflow |= __builtin_add_overflow(pendingDebits, pd, &pendingDebits);
      overflow |= __builtin_add_overflow(pendingCredits, pc, &pendingCredits);
      if (b.getAccountId() == merchantAccount) merchantNet = c - d;
    }
    bool balanced = !overflow && debits == credits && pendingDebits == pendingCredits;
    printf("           %-23s %14s %14s   debits %s credits\n", "total",
           money(debits, currency).cStr(), money(credits, currency).cStr(), balanced ? "==" : "!=");

    auto audit = ledger.auditRequest();
    audit.setCurrency(currency);
    auto reply = audit.send().wait(ws);
    auto report = reply.getReport();
    bool clean = report.getDebitsEqualCredits() && report.getMismatches().size() == 0;
    printf("           audit by replay: %" PRIu64 " transfers, %u accounts, %s\n",
           report.getTransfers(), report.getAccounts(),
           clean ? "every balance matches the transfer log" : "MISMATCH");
    for (auto line : report.getMismatches())
      printf("             %s\n", line.cStr());
    bool paid = merchantNet == expected;
    printf("           %s holds %s; its payments settled %s: %s\n", merchantAccount.cStr(),
           money(merchantNet, currency).cStr(), money(expected, currency).cStr(),
           paid ? "equal" : "NOT EQUAL");
    return balanced && clean && paid;
  }
};

// Returns false when the balances do not add up.
bool runFlow(Flow& flow) {
  printf("%-22s %-10s (merchant %s)\n", "operation", "outcome", flow.merchant.c_str());
  flow.pay("purchase 25.00 EUR", true, 2500, "EUR", "tok_visa_approve");
  flow.pay("purchase, stolen card", true, 500, "EUR", "tok_stolen");
  auto order = flow.pay("authorize 50.00 EUR", false, 5000, "EUR", "tok_mastercard_approve");
  flow.operate("  capture 20.00", flow.payments.captureRequest(), order, 2000, "EUR");
  flow.operate("  capture 30.00", flow.payments.captureRequest(), order, 3000, "EUR");
  flow.operate("  refund 10.00", flow.payments.refundRequest(), order, 1000, "EUR");
  flow.operate("  refund 45.00", flow.payments.refundRequest(), order, 4500, "EUR");
  auto held = flow.pay("authorize 7.00 EUR", false, 700, "EUR", "tok_amex_approve");
  flow.operate("  void", flow.payments.voidPaymentRequest(), held, 0, "EUR");
  flow.operate("  capture after void", flow.payments.captureRequest(), held, 700, "EUR");
  flow.pay("FX purchase 100.00 EUR", true, 10000, "EUR", "tok_visa_approve", "USD");
  // The issuer approves but its answer is lost: only sync may settle it, never a resubmit.
  auto lost = flow.pay("purchase, answer lost", true, 1500, "EUR", "tok_timeout");
  flow.sync("  sync", lost);

  auto settled = flow.printPayments();
  bool ok = true;
  for (kj::StringPtr currency : {"EUR"_kj, "USD"_kj}) {
    auto it = settled.find(currency.cStr());
    ok &= flow.printLedger(currency, it == settled.end() ? 0 : it->second);
  }
  printf("\n%s\n", ok ? "balances add up: debits equal credits in every ledger, the audit agrees, "
                        "and the merchant holds what its payments settled"
                      : "BALANCES DO NOT ADD UP");
  return ok;
}

kj::String readText(const std::string& path) {
  auto fs = kj::newDiskFilesystem();
  auto file = fs->getRoot().openFile(fs->getCurrentPath().evalNative(path));
  return file->readAllText();
}

// The name the server's certificate must carry: the host part of "host:port", except that
// loopback addresses and unix sockets mean "localhost" (KJ checks DNS names, not IP addresses).
std::string hostOf(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return "localhost";
  auto host = !address.empty() && address[0] == '[' ? address.substr(1, address.find(']') - 1)
                                                    : address.substr(0, address.rfind(':'));
  if (host == "::1" || host.rfind("127.", 0) == 0) return "localhost";
  return host;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"payhost-client: call payment services through payhostd's Gateway"};
  std::string address = "127.0.0.1:7400";
  std::string service = "payments.card";
  app.add_option("-c,--connect", address, "host:port, or unix:/path")->capture_default_str();
  app.add_option("--service", service, "service name")->capture_default_str();
  std::string caFile, certFile, keyFile, serverName;
  app.add_option("--ca", caFile, "PEM CA that issued payhostd's certificate (enables TLS)");
  app.add_option("--cert", certFile, "PEM client certificate (its CN is the caller's identity)");
  app.add_option("--key", keyFile, "PEM private key of --cert");
  app.add_option("--server-name", serverName, "name in payhostd's certificate (default: host)");
  app.require_subcommand(1);
  auto list = app.add_subcommand("list", "List the services the host serves");
  Payment payment;
  auto auth = app.add_subcommand("authorize", "Authorize a card payment");
  auth->add_option("--merchant", payment.merchant)->capture_default_str();
  auth->add_option("--amount", payment.amount, "amount in minor units")->capture_default_str();
  auth->add_option("--currency", payment.currency)->capture_default_str();
  auth->add_option("--token", payment.token, "card token from the vault")->capture_default_str();
  auth->add_option("--key", payment.key, "idempotency key")->required();
  auto demo = app.add_subcommand("demo", "Run a short tour of the card processor");
  std::string cardCountry, ipCountry;
  auto screen = app.add_subcommand("screen", "Ask a fraud screen (--service) for a verdict");
  screen->add_option("--amount", payment.amount, "amount in minor units")->capture_default_str();
  screen->add_option("--currency", payment.currency)->capture_default_str();
  screen->add_option("--token", payment.token)->capture_default_str();
  screen->add_option("--card-country", cardCountry);
  screen->add_option("--ip-country", ipCountry);
  std::string flowPrefix = "flow";
  auto flow = app.add_subcommand(
      "flow", "Run payments through payments.payments, then print the ledger's balances");
  flow->add_option("--merchant", payment.merchant)->capture_default_str();
  flow->add_option("--key-prefix", flowPrefix, "idempotency keys are PREFIX-1, PREFIX-2...")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    auto io = kj::setupAsyncIo();
    auto target = io.provider->getNetwork().parseAddress(address).wait(io.waitScope);
    auto connection = target->connect().wait(io.waitScope);
    kj::Maybe<kj::Own<kj::TlsContext>> tls;
    if (!caFile.empty()) {
      kj::TlsCertificate ca(readText(caFile));
      kj::TlsContext::Options options;
      options.useSystemTrustStore = false;
      options.trustedCertificates = kj::arrayPtr(&ca, 1);
      options.minVersion = kj::TlsVersion::TLS_1_2;
      kj::Maybe<kj::TlsKeypair> keypair;
      if (!certFile.empty()) {
        keypair = kj::TlsKeypair{kj::TlsPrivateKey(readText(keyFile)),
                                 kj::TlsCertificate(readText(certFile))};
        options.defaultKeypair = KJ_ASSERT_NONNULL(keypair);
      }
      auto& context = *tls.emplace(kj::heap<kj::TlsContext>(kj::mv(options)));
      auto name = serverName.empty() ? hostOf(address) : serverName;
      connection = context.wrapClient(kj::mv(connection), name).wait(io.waitScope);
    }
    capnp::TwoPartyClient client(*connection);
    auto gateway = client.bootstrap().castAs<Gateway>();
    if (list->parsed()) {
      auto response = gateway.listServicesRequest().send().wait(io.waitScope);
      for (auto info : response.getServices()) {
        printf("%-24s %-40s %s %s\n", info.getName().cStr(), info.getInterfaceName().cStr(),
               info.getPlugin().cStr(), info.getVersion().cStr());
      }
      return 0;
    }
    if (flow->parsed()) {
      auto get = [&](kj::StringPtr name) {
        auto request = gateway.getServiceRequest();
        request.setName(name);
        return request.send().getService();
      };
      Flow run(get("payments.payments").castAs<Payments>(), get("payments.ledger").castAs<Ledger>(),
               io.waitScope, payment.merchant, flowPrefix);
      return runFlow(run) ? 0 : 2;
    }
    auto request = gateway.getServiceRequest();
    request.setName(service);
    auto capability = request.send().getService();
    if (screen->parsed()) {
      auto call = capability.castAs<payhost::schema::FraudScreen>().screenRequest();
      auto body = call.initRequest();
      body.setMerchantId(payment.merchant);
      body.initAmount().setMinorUnits(payment.amount);
      body.getAmount().setCurrency(payment.currency);
      body.setCardToken(payment.token);
      body.setCardCountry(cardCountry);
      body.setIpCountry(ipCountry);
      auto response = call.send().wait(io.waitScope);
      auto verdict = response.getVerdict();
      kj::Vector<kj::StringPtr> rules;
      for (auto rule : verdict.getFiredRules())
        rules.add(rule);
      printf("decision=%s score=%u rules=%s\n", nameOf(verdict.getDecision()).cStr(),
             verdict.getScore(), kj::strArray(rules, ",").cStr());
      return 0;
    }
    auto card = capability.castAs<CardProcessor>();
    if (auth->parsed()) {
      authorize(card, payment, "authorize").wait(io.waitScope);
    } else if (demo->parsed()) {
      runDemo(card, io.waitScope);
    }
    return 0;
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhost-client: %s: %s\n", address.c_str(), e.getDescription().cStr());
    return 1;
  }
}
