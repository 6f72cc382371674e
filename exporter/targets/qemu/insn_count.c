/*
 * insn_count: a QEMU (linux-user) TCG plugin that counts guest instructions between two marker
 * syscalls made by runtime_check around its timed loop: close(1000001) starts a window,
 * close(1000002) ends it and writes the window's count to the file given as `outfile=PATH`.
 *
 * Debian ships no qemu-plugin.h, so the few declarations this plugin needs from QEMU's plugin
 * API (version 1, QEMU 7.x) are written out below; QEMU resolves them when it dlopen()s us.
 * Built by `edgepack target setup` with: gcc -shared -fPIC -O2 -o insn_count.so insn_count.c
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through, never read */
struct qemu_plugin_tb;

enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(
    qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_syscall_cb(
    qemu_plugin_id_t id,
    void (*cb)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t, uint64_t,
               uint64_t, uint64_t, uint64_t, uint64_t));
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *),
                                    void *userdata);

EXPORT int qemu_plugin_version = 1;

#define AARCH64_SYS_CLOSE 57
#define MARK_START 1000001
#define MARK_STOP 1000002

static uint64_t executed;  /* guest instructions, bumped inline at each translation block */
static uint64_t window_start;
static int in_window;
static char outfile[4096];

/* At translation: add the block's instruction count inline each time it runs (no helper call,
 * so counting costs little and does not change what the guest executes). */
static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void write_count(uint64_t count)
{
    FILE *fh;
    if (!outfile[0] || !(fh = fopen(outfile, "w")))
        return;
    fprintf(fh, "%" PRIu64 "\n", count);
    fclose(fh);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != AARCH64_SYS_CLOSE)
        return;
    if (a1 == MARK_START) {
        window_start = executed;
        in_window = 1;
    } else if (a1 == MARK_STOP && in_window) {
        /* Written before the syscall returns, so the guest can read it right after close(). */
        write_count(executed - window_start);
        in_window = 0;
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id; (void)userdata;
    in_window = 0;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) == 0) {
            strncpy(outfile, argv[i] + 8, sizeof(outfile) - 1);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
