// Runs one kernel of kernels/conv2d.cu (the implicit-GEMM convolutions, grouped and dilated ones included, and the
// split sum) on the CPU (cuda_shim.h), for tests/emulation/emulate.py; the command line is emulation_main.h's.
#include "emulation_main.h"
#include "conv2d.cu"

int main(int argc, char** argv) {
    Launch l = parse_launch(argc, argv);
    auto n = [&](size_t i) { return (int)l.n(i); };
#define GEOMETRY n(0), n(1), n(2), n(3), n(4), n(5), n(6), n(7), n(8), n(9), n(10), n(11), n(12)
    if (l.kernel == "conv2d_fwd_bias_act") {
        l.run(3, [&] { conv2d_fwd_bias_act(l.a(0), l.a(1), l.a(2), l.a(3), GEOMETRY, n(13), l.f(0), n(14)); });
    } else if (l.kernel == "conv2d_bwd_data") {
        l.run(2, [&] { conv2d_bwd_data(l.a(0), l.a(1), l.a(2), GEOMETRY); });
    } else if (l.kernel == "conv2d_bwd_filter") {
        l.run(2, [&] { conv2d_bwd_filter(l.a(0), l.a(1), l.a(2), GEOMETRY, n(13)); });
    } else if (l.kernel == "conv2d_grouped_fwd_bias_act") {
        l.run(3, [&] {
            conv2d_grouped_fwd_bias_act(l.a(0), l.a(1), l.a(2), l.a(3), GEOMETRY, n(13), n(14), n(15), n(16), l.f(0), n(17));
        });
    } else if (l.kernel == "conv2d_grouped_bwd_data") {
        l.run(2, [&] { conv2d_grouped_bwd_data(l.a(0), l.a(1), l.a(2), GEOMETRY, n(13), n(14), n(15)); });
    } else if (l.kernel == "conv2d_grouped_bwd_filter") {
        l.run(2, [&] { conv2d_grouped_bwd_filter(l.a(0), l.a(1), l.a(2), GEOMETRY, n(13), n(14), n(15), n(16)); });
    } else if (l.kernel == "sum_splits_bias_act") {
        l.run(2, [&] { sum_splits_bias_act(l.a(0), l.a(1), l.a(2), l.n(0), l.n(1), l.n(2), l.n(3), n(4), l.f(0)); });
    } else {
        return unknown_kernel(l);
    }
    return 0;
}
