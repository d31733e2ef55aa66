// Flag files for ckptd's command line: `--flagfile=FILE` is expanded here,
// before Abseil parses the arguments, so that a file's lines get the same
// name normalisation as the command line (--data-dir = --data_dir) and a
// bad line is reported with its file and line number.
//
// The format is Abseil's: one flag per line, `--name=value`, or `--name` /
// `--noname` for a boolean flag. Leading and trailing whitespace is dropped;
// empty lines and lines whose first non-blank character is '#' are ignored.
// The value is the rest of the line as written (spaces included, no
// quoting). `--flagfile=A,B` reads A, then B; a line `--flagfile=OTHER`
// reads OTHER in its place (paths as given, relative to the working
// directory). The lines take the place of the --flagfile argument, so a flag
// that comes after it on the command line overrides the file, and one before
// it is overridden by it.
//
// Thread safety: ExpandFlagfiles is a pure function of its arguments and the
// files it reads.
#ifndef CKPTD_SERVER_COMMON_FLAG_FILE_H_
#define CKPTD_SERVER_COMMON_FLAG_FILE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd {

// Flag files including flag files this deep are refused (a file that
// includes itself, directly or not, reaches it).
inline constexpr int kMaxFlagfileDepth = 8;

enum class FlagKind {
  kUnknown,  // no flag of that name
  kBool,     // --name, --noname or --name=true|false
  kValue,    // needs --name=value
};

// What kind of flag `name` (normalised: '_', no leading dashes) is.
using FlagLookup = std::function<FlagKind(absl::string_view name)>;

// `args` (args[0] is the program name) with every --flagfile argument (also
// `-flagfile`, and `--flagfile FILE` as two arguments) replaced by the flags
// of its files, their names normalised to '_'. Other arguments are returned
// as they are. Errors (INVALID_ARGUMENT) name the file, the line and what to
// write instead: a file that cannot be read, a line that is not a flag, a
// flag `lookup` does not know, a value flag without `=value`, nesting deeper
// than kMaxFlagfileDepth.
absl::StatusOr<std::vector<std::string>> ExpandFlagfiles(
    const std::vector<std::string>& args, const FlagLookup& lookup);

}  // namespace ckptd

#endif  // CKPTD_SERVER_COMMON_FLAG_FILE_H_
