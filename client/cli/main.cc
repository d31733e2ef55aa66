// `ckpt`: the ckptd operator CLI. See commands.h for the commands.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "client/cli/commands.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv, argv + argc);
  ckptd::cli::CliContext context;
  context.out = &std::cout;
  context.err = &std::cerr;
  context.progress = ::isatty(STDERR_FILENO) == 1;
  return ckptd::cli::RunCli(args, context);
}
