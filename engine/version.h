#pragma once
#define STITCH_VERSION "0.1.0"
