#include "server/common/flag_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ckptd {
namespace {

constexpr absl::string_view kFlagfileName = "flagfile";
// A flag file is a few lines; anything bigger is the wrong file.
constexpr size_t kMaxFlagfileBytes = 1 << 20;

absl::StatusOr<std::string> ReadFlagfile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--flagfile ", path, ": cannot read: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        "--flagfile ", path, " is a directory; give the flag file in it"));
  }
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(
          "--flagfile ", path, ": cannot read: ", std::strerror(err)));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxFlagfileBytes) {
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("--flagfile ", path, " is over ", kMaxFlagfileBytes,
                       " bytes: not a flag file (one --name=value per line)"));
    }
  }
  ::close(fd);
  return text;
}

// "data-dir" -> "data_dir".
std::string NormalizeName(absl::string_view name) {
  std::string out(name);
  for (char& c : out) {
    if (c == '-') c = '_';
  }
  return out;
}

class Expander {
 public:
  explicit Expander(const FlagLookup& lookup) : lookup_(lookup) {}

  // Appends the flags of every file in `list` ("A,B") to `out`.
  absl::Status ExpandList(absl::string_view list, absl::string_view where,
                          int depth, std::vector<std::string>* out) {
    if (list.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "--flagfile needs a file: --flagfile=/etc/ckptd/ckptd.flags"));
    }
    const std::vector<absl::string_view> paths = absl::StrSplit(list, ',');
    for (absl::string_view path : paths) {
      if (path.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "--flagfile '", list,
                         "' has an empty file name; separate files with "
                         "single commas"));
      }
    }
    for (absl::string_view path : paths) {
      if (depth >= kMaxFlagfileDepth) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "--flagfile ", path, ": flag files nested more than ",
            kMaxFlagfileDepth, " deep (does one include itself?)"));
      }
      if (absl::Status st = ExpandFile(std::string(path), depth + 1, out);
          !st.ok()) {
        // Nested: the chain of files and lines that led there.
        return where.empty()
                   ? st
                   : absl::Status(st.code(), absl::StrCat(where, st.message()));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::Status ExpandFile(const std::string& path, int depth,
                          std::vector<std::string>* out) {
    absl::StatusOr<std::string> text = ReadFlagfile(path);
    if (!text.ok()) return text.status();
    int line_number = 0;
    for (absl::string_view raw : absl::StrSplit(*text, '\n')) {
      ++line_number;
      const absl::string_view line = absl::StripAsciiWhitespace(raw);
      if (line.empty() || line[0] == '#') continue;
      const std::string where =
          absl::StrCat("--flagfile ", path, " line ", line_number, ": ");
      auto bad = [&](absl::string_view why) {
        return absl::InvalidArgumentError(absl::StrCat(where, why));
      };
      absl::string_view flag = line;
      if (!absl::ConsumePrefix(&flag, "--") &&
          !absl::ConsumePrefix(&flag, "-")) {
        return bad(absl::StrCat("'", line,
                                "' is not a flag: write one --name=value per "
                                "line ('#' starts a comment line)"));
      }
      const size_t eq = flag.find('=');
      const absl::string_view raw_name = flag.substr(0, eq);
      const bool has_value = eq != absl::string_view::npos;
      if (raw_name.empty()) {
        return bad(absl::StrCat("'", line,
                                "' is not a flag: a flag file holds only "
                                "--name=value lines"));
      }
      if (const size_t space = raw_name.find_first_of(" \t");
          space != absl::string_view::npos) {
        const absl::string_view name = raw_name.substr(0, space);
        const absl::string_view rest =
            absl::StripLeadingAsciiWhitespace(flag.substr(space));
        return bad(absl::StrCat("'", line,
                                "': join a flag and its value with '=' in a "
                                "flag file: --",
                                name, "=", rest));
      }
      const std::string name = NormalizeName(raw_name);
      const absl::string_view value =
          has_value ? flag.substr(eq + 1) : absl::string_view();
      if (name == kFlagfileName) {
        if (absl::Status st = ExpandList(value, where, depth, out); !st.ok()) {
          return st;
        }
        continue;
      }
      FlagKind kind = lookup_(name);
      if (kind == FlagKind::kUnknown && !has_value &&
          absl::StartsWith(name, "no") &&
          lookup_(absl::string_view(name).substr(2)) == FlagKind::kBool) {
        kind = FlagKind::kBool;  // --noinsecure_no_auth
      }
      if (kind == FlagKind::kUnknown) {
        return bad(absl::StrCat("unknown flag --", name,
                                " (`ckptd --help` lists the flags)"));
      }
      if (kind == FlagKind::kValue && !has_value) {
        return bad(
            absl::StrCat("--", name, " needs a value: --", name, "=VALUE"));
      }
      out->push_back(has_value ? absl::StrCat("--", name, "=", value)
                               : absl::StrCat("--", name));
    }
    return absl::OkStatus();
  }

  const FlagLookup& lookup_;
};

// True for --flagfile=FILE / -flagfile=FILE (FILE in *value) and a bare
// --flagfile (*needs_next: FILE is the next argument).
bool IsFlagfileArg(absl::string_view arg, std::string* value,
                   bool* needs_next) {
  if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) {
    return false;
  }
  const size_t eq = arg.find('=');
  if (NormalizeName(arg.substr(0, eq)) != kFlagfileName) return false;
  *needs_next = eq == absl::string_view::npos;
  *value = *needs_next ? "" : std::string(arg.substr(eq + 1));
  return true;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExpandFlagfiles(
    const std::vector<std::string>& args, const FlagLookup& lookup) {
  std::vector<std::string> out;
  Expander expander(lookup);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    std::string value;
    bool needs_next = false;
    if (i == 0 || arg == "--" || !IsFlagfileArg(arg, &value, &needs_next)) {
      out.push_back(arg);
      if (arg == "--" && i > 0) {
        // Positional arguments follow; they are not flags.
        out.insert(out.end(), args.begin() + i + 1, args.end());
        break;
      }
      continue;
    }
    if (needs_next) {
      if (i + 1 == args.size()) {
        return absl::InvalidArgumentError(
            "--flagfile needs a file: --flagfile=/etc/ckptd/ckptd.flags");
      }
      value = args[++i];
    }
    if (absl::Status st = expander.ExpandList(value, "", 0, &out); !st.ok()) {
      return st;
    }
  }
  return out;
}

}  // namespace ckptd
