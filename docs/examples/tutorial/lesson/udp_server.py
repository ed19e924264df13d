# The lesson's UDP server, as the slides give it.  One change, so that it
# runs at all on Python 3: the slide's print("Message received: " + sentence)
# adds bytes to a str and raises TypeError on the very first datagram.
from socket import *
serverHost = "127.0.0.1"
serverPort = 50007
serverSocket = socket(AF_INET, SOCK_DGRAM)
serverSocket.bind(( serverHost, serverPort))
print ( 'The server is ready to receive ' )
while True:
    sentence, clientAddress = serverSocket.recvfrom(1024)
    print ("Message received: ", sentence )  # fixed: was "..." + sentence
    capitalizedSentence = sentence.decode().upper()
    serverSocket.sendto(capitalizedSentence.encode(), clientAddress)
