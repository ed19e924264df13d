# The lesson's UDP client, as the slides give it, but for one line break the
# slide layout added after "=" (which is not valid Python).
from socket import *
serverName = 'localhost'
serverPort = 50007
clientSocket = socket(AF_INET, SOCK_DGRAM)
message = input('Input lowercase sentence:')
clientSocket.sendto( message.encode(),
                    (serverName, serverPort) )
modifiedMessage, serverAddress = clientSocket.recvfrom(2048)
print (modifiedMessage.decode())
clientSocket.close()
