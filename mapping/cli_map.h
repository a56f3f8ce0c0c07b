// `stitch map train|eval|apply|help`: the command line of the map trainer.
#pragma once

namespace stitch {

// argv[1] is "map", argv[2] the subcommand. Throws stitch::Error on bad input (the CLI
// prints it as one line and exits with status 2).
int cmd_map(int argc, char** argv);

// `stitch help map` (constant-initialised, so engine/cli.cpp's help table may hold it).
extern const char kMapHelp[];

}  // namespace stitch
