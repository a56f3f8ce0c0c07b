namespace stitch {
int run_cli(int argc, char** argv);
}
int main(int argc, char** argv) { return stitch::run_cli(argc, argv); }
