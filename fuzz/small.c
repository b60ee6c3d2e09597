/* Source of the seed binaries of unwind_table and symbolize_elf: gcc -O2 (small) and -O1 -g (small-debug). */
int main(void) { return 0; }
