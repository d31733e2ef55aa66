// The `ckpt` operator CLI: argument parsing (CLI11) and one function per
// command over the ckptd C++ client.
//
//   ckpt [--server ADDR] [--json] COMMAND ...
//
// Output is an aligned table (or "key: value" block) by default and JSON with
// --json. Exit status: 0 on success; 1 when the server or the local system
// reports an error (stderr: "ckpt: NOT_FOUND: <server message>"); 2 for a
// usage error found before anything is sent (bad flags, "x@" instead of
// RUN@REF, a malformed k=v, ...). Global flags may also follow the command.
//
// Thread safety: RunCli may be called concurrently only with distinct
// output streams.
#ifndef CKPTD_CLIENT_CLI_COMMANDS_H_
#define CKPTD_CLIENT_CLI_COMMANDS_H_

#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ckptd/client.h"

namespace ckptd::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

using ClientConnector = std::function<absl::StatusOr<std::unique_ptr<Client>>(
    const ClientOptions&)>;

// Where a run of the CLI writes, and how it reaches the server.
struct CliContext {
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  // Draw transfer progress bars on `err` (main: stderr is a terminal).
  bool progress = false;
  // Empty: Client::Connect.
  ClientConnector connect;
};

// Parses `args` (args[0] is the program name), runs the command and returns
// the exit status.
int RunCli(const std::vector<std::string>& args, const CliContext& context);

// ---- Argument helpers (exposed for tests) ----

// A usage error: RunCli prints "ckpt: <message>" and exits with kExitUsage.
absl::Status UsageError(absl::string_view message);
bool IsUsageError(const absl::Status& status);

// RUN or RUN@REF.
struct VersionRef {
  std::string run;
  std::string ref;  // empty only with RefRule::kOptional and no @REF
};

enum class RefRule {
  kDefaultLast,  // RUN means RUN@last
  kRequired,     // @REF must be given (destructive commands)
  kOptional,     // RUN leaves ref empty (e.g. verify: every version)
};

// Validates the run name and the ref locally; usage errors such as
// "bad version reference 'x@': expected RUN@REF such as llama@best or
// llama@12".
absl::StatusOr<VersionRef> ParseVersionRef(absl::string_view arg, RefRule rule);
// [A-Za-z0-9][A-Za-z0-9._-]{0,127}, as the server checks it.
absl::Status CheckRunName(absl::string_view name);
// A run name given where a plain run is expected (rejects "llama@3").
absl::Status CheckRunArgument(absl::string_view arg);
// A user alias: a valid name, not "last"/"best", not all digits.
absl::Status CheckAliasName(absl::string_view name);
// A ref: a version number >= 1, "last", "best" or an alias name.
absl::Status CheckRef(absl::string_view ref);

// "k=v" for --metric / --label; the key must be non-empty.
absl::StatusOr<std::pair<std::string, std::string>> ParseKeyValue(
    absl::string_view arg, absl::string_view flag);

// The policy edits `ckpt policy RUN --...` asks for; unset fields stay. On a
// run the server does not know yet, they apply to the default policy (the
// server's SetPolicy creates the run).
struct PolicyEdit {
  std::optional<std::string> monitor;
  std::optional<std::string> mode;  // "min" or "max"
  std::optional<uint32_t> keep_last;
  std::optional<uint32_t> keep_best;
  std::optional<uint64_t> keep_every_n_steps;
  bool clear_retention = false;

  bool empty() const {
    return !monitor && !mode && !keep_last && !keep_best &&
           !keep_every_n_steps && !clear_retention;
  }
};
// `current` with `edit` applied; --clear-retention applies first, so
// "--clear-retention --keep-last 3" leaves only keep_last.
Policy ApplyPolicyEdit(Policy current, const PolicyEdit& edit);

}  // namespace ckptd::cli

#endif  // CKPTD_CLIENT_CLI_COMMANDS_H_
