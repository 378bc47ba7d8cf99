// emulation_main.h: the command line every tests/emulation/*_main.cpp driver shares (tests/emulation/emulate.py):
//   MAIN KERNEL GX GY GZ THREADS MISALIGN ARRAYS FILE... SCALAR...
// Each FILE holds one float32 array (raw bytes; "-" for a null pointer), read into a heap buffer of exactly its
// size (MISALIGN 1: one float past a 16-byte boundary, so that a kernel's scalar path runs), and written back
// after the launch. ARRAYS is how many FILEs there are; the scalars follow in the kernel's parameter order:
// integers as n(0), n(1), ... and the float ones (a '.' in their text) as f(0), f(1), ...
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_shim.h"

struct Buffer {
    std::string path;
    std::unique_ptr<float[]> storage;
    float* data = nullptr;
    size_t count = 0;
};

struct Launch {
    std::string kernel;
    unsigned gx = 1, gy = 1, gz = 1, threads = 1;
    std::vector<Buffer> buffers;
    std::vector<long long> ints;
    std::vector<float> floats;

    float* a(size_t i) { return buffers.at(i).data; }
    long long n(size_t i) const { return ints.size() > i ? ints[i] : fail("too few integer scalars"); }
    float f(size_t i) const { return floats.size() > i ? floats[i] : (float)fail("too few float scalars"); }
    // Runs body as every thread of the grid, then writes arrays `out` back to its file.
    void run(size_t out, const std::function<void()>& body) {
        emulate_launch(gx, gy, gz, threads, body);
        write_buffer(buffers.at(out));
    }
    [[noreturn]] static long long fail(const char* why) {
        std::fprintf(stderr, "%s\n", why);
        std::exit(2);
    }
    static void write_buffer(const Buffer& b) {
        if (!b.data) return;
        FILE* f = std::fopen(b.path.c_str(), "wb");
        if (!f || std::fwrite(b.data, sizeof(float), b.count, f) != b.count) { std::perror(b.path.c_str()); std::exit(2); }
        std::fclose(f);
    }
};

inline Buffer read_buffer(const char* path, bool misalign) {
    Buffer b;
    b.path = path;
    if (std::strcmp(path, "-") == 0) return b;
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    b.count = (size_t)std::ftell(f) / sizeof(float);
    std::fseek(f, 0, SEEK_SET);
    b.storage.reset(new float[b.count + (misalign ? 1 : 0)]);
    b.data = b.storage.get() + (misalign ? 1 : 0);
    if (std::fread(b.data, sizeof(float), b.count, f) != b.count) { std::perror(path); std::exit(2); }
    std::fclose(f);
    return b;
}

inline Launch parse_launch(int argc, char** argv) {
    if (argc < 8) Launch::fail("usage: KERNEL GX GY GZ THREADS MISALIGN ARRAYS FILE... SCALAR...");
    Launch l;
    l.kernel = argv[1];
    l.gx = std::atoi(argv[2]), l.gy = std::atoi(argv[3]), l.gz = std::atoi(argv[4]), l.threads = std::atoi(argv[5]);
    const bool misalign = std::atoi(argv[6]) != 0;
    const int arrays = std::atoi(argv[7]);
    if (argc < 8 + arrays) Launch::fail("too few files");
    for (int i = 0; i < arrays; ++i) l.buffers.push_back(read_buffer(argv[8 + i], misalign));
    for (int i = 8 + arrays; i < argc; ++i) {
        if (std::strchr(argv[i], '.')) l.floats.push_back(std::strtof(argv[i], nullptr));
        else l.ints.push_back(std::atoll(argv[i]));
    }
    return l;
}

inline int unknown_kernel(const Launch& l) {
    std::fprintf(stderr, "unknown kernel %s\n", l.kernel.c_str());
    return 2;
}
