// Runs one kernel of kernels/conv2d_depthwise.cu on the CPU (cuda_shim.h), for tests/emulation/emulate.py:
//   conv2d_depthwise_main KERNEL GX GY GZ THREADS MISALIGN FILE... SCALAR...
// Each FILE holds one float32 array (raw bytes; "-" for a null pointer), read into a heap buffer of exactly its
// size (MISALIGN 1: one float past a 16-byte boundary, so that the kernels' scalar path runs), and written back
// after the launch. The kernel's arrays and scalars come in its parameter order.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "cuda_shim.h"
#include "conv2d_depthwise.cu"

struct Buffer {
    std::string path;
    std::unique_ptr<float[]> storage;
    float* data = nullptr;
    size_t count = 0;
};

static Buffer read_buffer(const char* path, bool misalign) {
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

static void write_buffer(const Buffer& b) {
    if (!b.data) return;
    FILE* f = std::fopen(b.path.c_str(), "wb");
    if (!f || std::fwrite(b.data, sizeof(float), b.count, f) != b.count) { std::perror(b.path.c_str()); std::exit(2); }
    std::fclose(f);
}

int main(int argc, char** argv) {
    if (argc < 7) { std::fprintf(stderr, "usage: KERNEL GX GY GZ THREADS MISALIGN FILE... SCALAR...\n"); return 2; }
    const std::string kernel = argv[1];
    const unsigned gx = std::atoi(argv[2]), gy = std::atoi(argv[3]), gz = std::atoi(argv[4]), threads = std::atoi(argv[5]);
    const bool misalign = std::atoi(argv[6]) != 0;
    const int files = kernel == "conv2d_depthwise_fwd_bias_act" ? 4 : 3;
    if (argc < 7 + files) { std::fprintf(stderr, "too few files\n"); return 2; }
    std::vector<Buffer> buffers;
    for (int i = 0; i < files; ++i) buffers.push_back(read_buffer(argv[7 + i], misalign));
    std::vector<int> ints;
    float slope = 0.f;
    for (int i = 7 + files; i < argc; ++i) {
        if (std::strchr(argv[i], '.')) slope = std::strtof(argv[i], nullptr);
        else ints.push_back(std::atoi(argv[i]));
    }
    auto a = [&](int i) { return buffers[i].data; };
    auto n = [&](size_t i) {
        if (i >= ints.size()) { std::fprintf(stderr, "too few scalars\n"); std::exit(2); }
        return ints[i];
    };
    if (kernel == "conv2d_depthwise_fwd_bias_act") {
        emulate_launch(gx, gy, gz, threads, [&] {
            conv2d_depthwise_fwd_bias_act(a(0), a(1), a(2), a(3), n(0), n(1), n(2), n(3), n(4), n(5), n(6), n(7), n(8),
                                          n(9), n(10), n(11), slope);
        });
        write_buffer(buffers[3]);
    } else if (kernel == "conv2d_depthwise_bwd_data") {
        emulate_launch(gx, gy, gz, threads, [&] {
            conv2d_depthwise_bwd_data(a(0), a(1), a(2), n(0), n(1), n(2), n(3), n(4), n(5), n(6), n(7), n(8), n(9), n(10));
        });
        write_buffer(buffers[2]);
    } else if (kernel == "conv2d_depthwise_bwd_filter") {
        emulate_launch(gx, gy, gz, threads, [&] {
            conv2d_depthwise_bwd_filter(a(0), a(1), a(2), n(0), n(1), n(2), n(3), n(4), n(5), n(6), n(7), n(8), n(9),
                                        n(10), n(11));
        });
        write_buffer(buffers[2]);
    } else {
        std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
        return 2;
    }
    return 0;
}
