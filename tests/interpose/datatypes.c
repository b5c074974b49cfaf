/* Moves non-contiguous MPI datatypes between ranks 0 and 1 with every call the interposer wraps, and
 * writes what each rank ended up with (received buffers, packed bytes, counts, error classes) to
 * OUTDIR/rank-R.txt, one "name hex" line per result. The test runs it with and without the
 * interposer (on both ranks or one) and compares the files byte for byte: MPICH alone is the
 * reference. Ranks beyond 1 only take part in the collective parts.
 *
 * Usage: mpiexec -n 2 datatypes OUTDIR
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TYPE_COUNT 7
#define OBJECTS 3
#define UNTOUCHED 0xEE

static FILE *report;

static void check(int code, const char *what) {
    if (code != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(code, text, &length);
        fprintf(stderr, "%s failed: %s\n", what, text);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
}

static void record_bytes(const char *name, int type_index, const unsigned char *bytes, MPI_Aint length) {
    fprintf(report, "%s[%d] ", name, type_index);
    for (MPI_Aint i = 0; i < length; ++i) {
        fprintf(report, "%02x", bytes[i]);
    }
    fprintf(report, "\n");
}

static void record_number(const char *name, int type_index, long long value) {
    fprintf(report, "%s[%d] %lld\n", name, type_index, value);
}

static void record_status(const char *name, int type_index, const MPI_Status *status, MPI_Datatype type) {
    int count = 0, elements = 0;
    MPI_Get_count(status, type, &count);
    MPI_Get_elements(status, type, &elements);
    fprintf(report, "%s[%d] source=%d tag=%d count=%d elements=%d\n", name, type_index, status->MPI_SOURCE,
            status->MPI_TAG, count, elements);
}

/* The types under test, all committed through MPI_Type_commit (so the interposer sees them). */
static void build_types(MPI_Datatype types[TYPE_COUNT]) {
    MPI_Datatype plain_struct, padded;
    /* 0: vector of ints with gaps */
    check(MPI_Type_vector(7, 3, 5, MPI_INT, &types[0]), "vector");
    /* 1: 3-D subarray of doubles, C order */
    {
        int sizes[3] = {6, 5, 4}, subsizes[3] = {3, 2, 3}, starts[3] = {1, 2, 1};
        check(MPI_Type_create_subarray(3, sizes, subsizes, starts, MPI_ORDER_C, MPI_DOUBLE, &types[1]), "subarray");
    }
    /* 2: indexed ints, blocks out of order */
    {
        int lengths[4] = {2, 1, 3, 1}, displacements[4] = {9, 0, 4, 14};
        check(MPI_Type_indexed(4, lengths, displacements, MPI_INT, &types[2]), "indexed");
    }
    /* 3: struct {int; double[2]; char} with MPI's own padding */
    {
        int lengths[3] = {1, 2, 1};
        MPI_Aint displacements[3] = {0, 8, 24};
        MPI_Datatype members[3] = {MPI_INT, MPI_DOUBLE, MPI_CHAR};
        check(MPI_Type_create_struct(3, lengths, displacements, members, &types[3]), "struct");
    }
    /* 4: hvector of a resized struct (nested layouts) */
    {
        int lengths[2] = {1, 1};
        MPI_Aint displacements[2] = {4, 16};
        MPI_Datatype members[2] = {MPI_SHORT, MPI_FLOAT};
        check(MPI_Type_create_struct(2, lengths, displacements, members, &plain_struct), "inner struct");
        check(MPI_Type_create_resized(plain_struct, 0, 24, &padded), "resized");
        check(MPI_Type_create_hvector(4, 2, 80, padded, &types[4]), "hvector");
        MPI_Type_free(&plain_struct);
        MPI_Type_free(&padded);
    }
    /* 5: 2-D subarray, Fortran order, of a contiguous pair */
    {
        int sizes[2] = {5, 7}, subsizes[2] = {3, 4}, starts[2] = {2, 1};
        MPI_Datatype pair;
        check(MPI_Type_contiguous(2, MPI_FLOAT, &pair), "contiguous");
        check(MPI_Type_create_subarray(2, sizes, subsizes, starts, MPI_ORDER_FORTRAN, pair, &types[5]), "subarray F");
        MPI_Type_free(&pair);
    }
    /* 6: indexed block of doubles */
    {
        int displacements[3] = {6, 1, 3};
        check(MPI_Type_create_indexed_block(3, 2, displacements, MPI_DOUBLE, &types[6]), "indexed_block");
    }
    for (int i = 0; i < TYPE_COUNT; ++i) {
        check(MPI_Type_commit(&types[i]), "commit");
    }
}

/* Bytes from the origin of object 0 to the end of the last object's data. */
static MPI_Aint buffer_bytes(MPI_Datatype type, int count) {
    MPI_Aint lb, extent, true_lb, true_extent;
    MPI_Type_get_extent(type, &lb, &extent);
    MPI_Type_get_true_extent(type, &true_lb, &true_extent);
    return (count - 1) * extent + true_lb + true_extent;
}

static unsigned char *patterned(MPI_Aint bytes, int seed) {
    unsigned char *buffer = malloc(bytes);
    for (MPI_Aint i = 0; i < bytes; ++i) {
        buffer[i] = (unsigned char)(i * 7 + seed * 13 + 1);
    }
    return buffer;
}

static unsigned char *untouched(MPI_Aint bytes) {
    unsigned char *buffer = malloc(bytes);
    memset(buffer, UNTOUCHED, bytes);
    return buffer;
}

static void blocking(int rank, int t, MPI_Datatype type) {
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    if (rank == 0) {
        unsigned char *data = patterned(bytes, t);
        check(MPI_Send(data, OBJECTS, type, 1, 10 + t, MPI_COMM_WORLD), "Send");
        /* to MPI_ANY_SOURCE with the status ignored */
        check(MPI_Send(data, OBJECTS, type, 1, 20 + t, MPI_COMM_WORLD), "Send");
        /* one object's worth of bytes into a receive of OBJECTS objects: a short message */
        int size = 0;
        MPI_Type_size(type, &size);
        check(MPI_Send(data, size, MPI_BYTE, 1, 30 + t, MPI_COMM_WORLD), "Send bytes");
        free(data);
    } else if (rank == 1) {
        MPI_Status status;
        unsigned char *received = untouched(bytes);
        check(MPI_Recv(received, OBJECTS, type, 0, 10 + t, MPI_COMM_WORLD, &status), "Recv");
        record_bytes("recv", t, received, bytes);
        record_status("recv_status", t, &status, type);
        memset(received, UNTOUCHED, bytes);
        check(MPI_Recv(received, OBJECTS, type, MPI_ANY_SOURCE, 20 + t, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
              "Recv any");
        record_bytes("recv_any", t, received, bytes);
        memset(received, UNTOUCHED, bytes);
        check(MPI_Recv(received, OBJECTS, type, 0, 30 + t, MPI_COMM_WORLD, &status), "Recv short");
        record_bytes("recv_short", t, received, bytes);
        record_status("recv_short_status", t, &status, type);
        free(received);
    }
}

static void truncated(int rank, int t, MPI_Datatype type) {
    MPI_Aint bytes = buffer_bytes(type, OBJECTS + 1);
    if (rank == 0) {
        unsigned char *data = patterned(bytes, t + 5);
        check(MPI_Send(data, OBJECTS + 1, type, 1, 40 + t, MPI_COMM_WORLD), "Send long");
        free(data);
    } else if (rank == 1) {
        MPI_Status status;
        int class_of_error = 0;
        unsigned char *received = untouched(bytes);
        int code = MPI_Recv(received, OBJECTS, type, 0, 40 + t, MPI_COMM_WORLD, &status);
        MPI_Error_class(code, &class_of_error);
        record_number("truncated_class_is_truncate", t, class_of_error == MPI_ERR_TRUNCATE);
        free(received);
    }
}

static void nonblocking(int rank, int t, MPI_Datatype type) {
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    MPI_Request requests[3];
    MPI_Status statuses[3];
    if (rank == 0) {
        unsigned char *data = patterned(bytes, t + 1);
        check(MPI_Isend(data, OBJECTS, type, 1, 50 + t, MPI_COMM_WORLD, &requests[0]), "Isend");
        check(MPI_Isend(data, OBJECTS, type, 1, 60 + t, MPI_COMM_WORLD, &requests[1]), "Isend");
        check(MPI_Isend(data, OBJECTS, type, 1, 70 + t, MPI_COMM_WORLD, &requests[2]), "Isend");
        check(MPI_Waitall(3, requests, MPI_STATUSES_IGNORE), "Waitall");
        /* completed one by one with MPI_Wait and MPI_Test */
        check(MPI_Isend(data, OBJECTS, type, 1, 80 + t, MPI_COMM_WORLD, &requests[0]), "Isend");
        check(MPI_Wait(&requests[0], MPI_STATUS_IGNORE), "Wait");
        check(MPI_Isend(data, OBJECTS, type, 1, 90 + t, MPI_COMM_WORLD, &requests[0]), "Isend");
        for (int flag = 0; !flag;) {
            check(MPI_Test(&requests[0], &flag, MPI_STATUS_IGNORE), "Test");
        }
        free(data);
    } else if (rank == 1) {
        unsigned char *received[3];
        int flag = 0;
        for (int i = 0; i < 3; ++i) {
            received[i] = untouched(bytes);
        }
        /* Waitall with statuses */
        check(MPI_Irecv(received[0], OBJECTS, type, 0, 50 + t, MPI_COMM_WORLD, &requests[0]), "Irecv");
        check(MPI_Irecv(received[1], OBJECTS, type, MPI_ANY_SOURCE, 60 + t, MPI_COMM_WORLD, &requests[1]), "Irecv");
        check(MPI_Irecv(received[2], OBJECTS, type, 0, 70 + t, MPI_COMM_WORLD, &requests[2]), "Irecv");
        check(MPI_Waitall(3, requests, statuses), "Waitall");
        for (int i = 0; i < 3; ++i) {
            record_bytes("irecv_waitall", t * 3 + i, received[i], bytes);
            record_status("irecv_waitall_status", t * 3 + i, &statuses[i], type);
            memset(received[i], UNTOUCHED, bytes);
        }
        /* Wait without a status, then Testall */
        check(MPI_Irecv(received[0], OBJECTS, type, 0, 80 + t, MPI_COMM_WORLD, &requests[0]), "Irecv");
        check(MPI_Wait(&requests[0], MPI_STATUS_IGNORE), "Wait");
        record_bytes("irecv_wait", t, received[0], bytes);
        check(MPI_Irecv(received[1], OBJECTS, type, 0, 90 + t, MPI_COMM_WORLD, &requests[1]), "Irecv");
        while (!flag) {
            check(MPI_Testall(1, &requests[1], &flag, MPI_STATUSES_IGNORE), "Testall");
        }
        record_bytes("irecv_testall", t, received[1], bytes);
        for (int i = 0; i < 3; ++i) {
            free(received[i]);
        }
    }
}

/* Waitany / Waitsome / Testany: a second round of three messages. */
static void completion_variants(int rank, int t, MPI_Datatype type) {
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    MPI_Request requests[3];
    if (rank == 0) {
        unsigned char *data = patterned(bytes, t + 2);
        for (int i = 0; i < 3; ++i) {
            check(MPI_Send(data, OBJECTS, type, 1, 100 + 3 * t + i, MPI_COMM_WORLD), "Send");
        }
        free(data);
    } else if (rank == 1) {
        unsigned char *received[3];
        MPI_Status statuses[3];
        int index = MPI_UNDEFINED, outcount = 0, indices[3], flag = 0;
        for (int i = 0; i < 3; ++i) {
            received[i] = untouched(bytes);
            check(MPI_Irecv(received[i], OBJECTS, type, 0, 100 + 3 * t + i, MPI_COMM_WORLD, &requests[i]), "Irecv");
        }
        check(MPI_Waitany(3, requests, &index, &statuses[0]), "Waitany");
        record_number("waitany_done", t, index >= 0);
        while (!flag) {
            check(MPI_Testany(3, requests, &index, &flag, MPI_STATUS_IGNORE), "Testany");
        }
        for (int left = 1; left > 0;) {
            check(MPI_Waitsome(3, requests, &outcount, indices, statuses), "Waitsome");
            left = 0;
            for (int i = 0; i < 3; ++i) {
                left += requests[i] != MPI_REQUEST_NULL;
            }
            if (outcount == MPI_UNDEFINED) {
                break;
            }
        }
        for (int i = 0; i < 3; ++i) {
            record_bytes("waitany_some", 3 * t + i, received[i], bytes);
            free(received[i]);
        }
    }
}

static void exchange(int rank, int t, MPI_Datatype type) {
    if (rank > 1) {
        return;
    }
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    MPI_Status status;
    int peer = 1 - rank;
    unsigned char *data = patterned(bytes, t + 3 + rank);
    unsigned char *received = untouched(bytes);
    check(MPI_Sendrecv(data, OBJECTS, type, peer, 200 + t, received, OBJECTS, type, peer, 200 + t, MPI_COMM_WORLD,
                       &status),
          "Sendrecv");
    record_bytes("sendrecv", t, received, bytes);
    record_status("sendrecv_status", t, &status, type);
    /* typed on one side, bytes on the other */
    memset(received, UNTOUCHED, bytes);
    if (rank == 0) {
        check(MPI_Sendrecv(data, OBJECTS, type, peer, 210 + t, received, (int)bytes, MPI_BYTE, peer, 210 + t,
                           MPI_COMM_WORLD, MPI_STATUS_IGNORE),
              "Sendrecv mixed");
    } else {
        int size = 0;
        MPI_Type_size(type, &size);
        check(MPI_Sendrecv(data, OBJECTS * size, MPI_BYTE, peer, 210 + t, received, OBJECTS, type, peer, 210 + t,
                           MPI_COMM_WORLD, MPI_STATUS_IGNORE),
              "Sendrecv mixed");
    }
    record_bytes("sendrecv_mixed", t, received, bytes);
    /* to and from MPI_PROC_NULL: nothing moves, the status says so */
    memset(received, UNTOUCHED, bytes);
    check(MPI_Sendrecv(data, OBJECTS, type, MPI_PROC_NULL, 0, received, OBJECTS, type, MPI_PROC_NULL, 0,
                       MPI_COMM_WORLD, &status),
          "Sendrecv null");
    record_bytes("sendrecv_null", t, received, bytes);
    record_status("sendrecv_null_status", t, &status, type);
    free(data);
    free(received);
}

static void pack_unpack(int t, MPI_Datatype type) {
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    int packed_size = 0, position = 0, size = 0;
    MPI_Type_size(type, &size);
    check(MPI_Pack_size(OBJECTS, type, MPI_COMM_WORLD, &packed_size), "Pack_size");
    record_number("pack_size", t, packed_size);  /* MPI's own answer, an upper bound */
    if (packed_size < OBJECTS * size) {
        fprintf(stderr, "MPI_Pack_size %d is below the packed size %d\n", packed_size, OBJECTS * size);
        MPI_Abort(MPI_COMM_WORLD, 4);
    }
    unsigned char *data = patterned(bytes, t + 4);
    unsigned char *packed = untouched(packed_size + 8);
    /* two packs after a 3-byte header: positions must advance exactly like MPI's */
    position = 3;
    check(MPI_Pack(data, 1, type, packed, packed_size + 8, &position, MPI_COMM_WORLD), "Pack");
    record_number("pack_position_1", t, position);
    check(MPI_Pack(data, OBJECTS - 1, type, packed, packed_size + 8, &position, MPI_COMM_WORLD), "Pack");
    record_number("pack_position_2", t, position);
    record_bytes("packed", t, packed, packed_size + 8);
    unsigned char *unpacked = untouched(bytes);
    position = 3;
    check(MPI_Unpack(packed, packed_size + 8, &position, unpacked, OBJECTS, type, MPI_COMM_WORLD), "Unpack");
    record_number("unpack_position", t, position);
    record_bytes("unpacked", t, unpacked, bytes);
    /* large-count forms */
    MPI_Count position_c = 0;
    memset(packed, UNTOUCHED, packed_size + 8);
    check(MPI_Pack_c(data, OBJECTS, type, packed, packed_size + 8, &position_c, MPI_COMM_WORLD), "Pack_c");
    record_number("pack_c_position", t, position_c);
    record_bytes("packed_c", t, packed, packed_size + 8);
    memset(unpacked, UNTOUCHED, bytes);
    position_c = 0;
    check(MPI_Unpack_c(packed, packed_size + 8, &position_c, unpacked, OBJECTS, type, MPI_COMM_WORLD), "Unpack_c");
    record_bytes("unpacked_c", t, unpacked, bytes);
    free(data);
    free(packed);
    free(unpacked);
}

/* A non-periodic line of all ranks: the end ranks have MPI_PROC_NULL neighbours, whose receive
 * blocks must stay untouched. */
static void neighbours(int rank, int size, int t, MPI_Datatype type) {
    MPI_Comm line;
    int dims[1] = {size}, periods[1] = {0};
    check(MPI_Cart_create(MPI_COMM_WORLD, 1, dims, periods, 0, &line), "Cart_create");
    MPI_Aint bytes = buffer_bytes(type, OBJECTS);
    unsigned char *data = patterned(2 * bytes, t + 6 + rank);
    unsigned char *received = untouched(2 * bytes);
    int counts[2] = {OBJECTS, OBJECTS};
    MPI_Aint displacements[2] = {0, bytes};
    MPI_Datatype types[2] = {type, type};
    check(MPI_Neighbor_alltoallw(data, counts, displacements, types, received, counts, displacements, types, line),
          "Neighbor_alltoallw");
    record_bytes("neighbor", t, received, 2 * bytes);
    free(data);
    free(received);
    MPI_Comm_free(&line);
}

int main(int argc, char **argv) {
    int rank, size;
    char path[4096];
    MPI_Datatype types[TYPE_COUNT];
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    snprintf(path, sizeof path, "%s/rank-%d.txt", argv[1], rank);
    report = fopen(path, "w");
    if (report == NULL) {
        perror(path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    build_types(types);
    for (int t = 0; t < TYPE_COUNT; ++t) {
        blocking(rank, t, types[t]);
        truncated(rank, t, types[t]);
        nonblocking(rank, t, types[t]);
        completion_variants(rank, t, types[t]);
        exchange(rank, t, types[t]);
        pack_unpack(t, types[t]);
        neighbours(rank, size, t, types[t]);
    }
    for (int t = 0; t < TYPE_COUNT; ++t) {
        MPI_Type_free(&types[t]);
    }
    fclose(report);
    MPI_Finalize();
    return 0;
}
