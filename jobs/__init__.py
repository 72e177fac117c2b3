"""What a job is: request lines, the streaming reader, rendering into token ids, results."""
