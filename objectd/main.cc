int main() { return 0; }  // replaced by the S3 server's main
